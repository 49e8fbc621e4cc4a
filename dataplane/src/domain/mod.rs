//! Pure rules: envelopes and their canonical form, claims, policy, tenancy. No I/O.

pub mod envelope;
pub mod policy;
pub mod seal_error;
pub mod tenancy;
