//! OCI distribution client.
//!
//! CONTRACT used by lazyfs and the bins (keep these names):
//! - `Reference::parse(&str)`
//! - `Client` (cheap to clone) with `resolve`, manifest/config fetch, `blob_reader`, push.
//! - `BlobReader` (Clone + Send + Sync): `size() -> u64`,
//!   `async read_at(offset, len) -> Result<Bytes>`,
//!   `async read_ranges(&[(offset, len)]) -> Result<Vec<Bytes>>`.
//! - `Error::kind() -> ErrorKind { Unauthorized, NotFound, Unreachable, Invalid, .. }`.
