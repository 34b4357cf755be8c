//! This library target exists only so that agentd can list this crate as a build dependency
//! (cargo then rebuilds agentd when the programs change); the programs live in `src/main.rs`.
#![no_std]
