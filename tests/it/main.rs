//! The one integration-test binary (one link, many modules).

mod harness;
mod store_conformance;
