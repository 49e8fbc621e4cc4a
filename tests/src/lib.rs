//! End-to-end tests across the SEAL Gateway crates live in `tests/`; this library is their home.
