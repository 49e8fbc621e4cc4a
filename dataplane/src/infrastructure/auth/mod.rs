//! Authentication: SEAL envelopes and their security tokens, and operator JWTs.

pub mod envelope;
pub mod operator;
pub mod token;
