//! The SEAL Gateway operator. This crate holds the CRD generation the Helm chart ships; the controllers
//! that reconcile SealGateways into data planes build on it.

pub mod crdgen;
