//! The tamper-evident activity log: every record agentd produces is a leaf of an RFC 6962
//! Merkle tree, stored in append-only segment files, with Ed25519-signed C2SP checkpoints.
//! `docs/log-format.md` specifies the bytes.
//!
//! # Layout
//!
//! - [`merkle`]: hashes, the append frontier, inclusion and consistency proofs.
//! - [`note`]: signed notes, checkpoints and keys in the C2SP formats.
//! - [`keys`]: the signing key on disk.
//! - [`segment`]: frames and index entries; [`files`]: the other files of a log directory.
//! - [`store`]: the writer (append, commit, checkpoint, recovery, retention).
//! - [`reader`]: read access for proofs, verification and serving past records.
//! - [`verify`]: the offline verifier behind `agentctl verify`; [`proof`]: proof bundles.

pub mod files;
pub mod keys;
pub mod merkle;
pub mod note;
pub mod proof;
pub mod reader;
pub mod segment;
pub mod store;
pub mod verify;
