//! Test support shared by the operator's integration tests.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod fake_api;
