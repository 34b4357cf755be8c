//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to find the
//! byte offset of a struct member, through anonymous structs and unions.
//!
//! Rust eBPF programs get no CO-RE relocations, so agentd resolves the offsets the programs need
//! here and hands them over as a global (see `sensor_common::offsets`). The format is the kernel's
//! `Documentation/bpf/btf.rst`: a header, a type section of variable-length records, a string
//! section.

use std::{collections::HashMap, path::Path};

use sensor_common::offsets::{KernelOffsets, MISSING};

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Why BTF could not be read or a member not found.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The data is not BTF or is cut short.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// A type of an unknown kind: the parser cannot skip it.
    #[error("unknown BTF kind {0}")]
    UnknownKind(u32),
}

#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Offset in bits from the start of the enclosing struct or union.
    bit_offset: u32,
}

#[derive(Clone, Debug)]
struct Type {
    kind: u32,
    name_off: u32,
    /// The referenced type for typedefs, qualifiers and pointers.
    type_id: u32,
    members: Vec<Member>,
}

/// Parsed BTF: types and their names.
pub struct Btf {
    strings: Vec<u8>,
    /// Index 0 is the implicit `void` type.
    types: Vec<Type>,
    structs_by_name: HashMap<String, u32>,
}

fn u32_at(data: &[u8], pos: usize) -> Result<u32, BtfError> {
    data.get(pos..pos + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// Reads and parses the BTF at `path`.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses little-endian BTF data.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let magic = data.get(0..2).ok_or(BtfError::Malformed("truncated"))?;
        if u16::from_le_bytes([magic[0], magic[1]]) != MAGIC {
            return Err(BtfError::Malformed("bad magic"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_start = hdr_len + type_off;
        let type_data = data
            .get(types_start..types_start + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();

        let mut types = vec![Type {
            kind: 0,
            name_off: 0,
            type_id: 0,
            members: Vec::new(),
        }];
        let mut pos = 0;
        while pos < type_data.len() {
            let name_off = u32_at(type_data, pos)?;
            let info = u32_at(type_data, pos + 4)?;
            let size_or_type = u32_at(type_data, pos + 8)?;
            pos += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => pos += 4,
                KIND_ARRAY => pos += 12,
                KIND_STRUCT | KIND_UNION => {
                    members.reserve(vlen);
                    for i in 0..vlen {
                        let at = pos + 12 * i;
                        let offset = u32_at(type_data, at + 8)?;
                        members.push(Member {
                            name_off: u32_at(type_data, at)?,
                            type_id: u32_at(type_data, at + 4)?,
                            // With kind_flag set the top 8 bits hold a bitfield size.
                            bit_offset: if kind_flag {
                                offset & 0x00ff_ffff
                            } else {
                                offset
                            },
                        });
                    }
                    pos += 12 * vlen;
                }
                KIND_ENUM | KIND_FUNC_PROTO => pos += 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => pos += 12 * vlen,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => {}
                other => return Err(BtfError::UnknownKind(other)),
            }
            types.push(Type {
                kind,
                name_off,
                type_id: size_or_type,
                members,
            });
        }

        let mut btf = Self {
            strings,
            types,
            structs_by_name: HashMap::new(),
        };
        for (id, ty) in btf.types.iter().enumerate() {
            if (ty.kind == KIND_STRUCT || ty.kind == KIND_UNION) && ty.name_off != 0 {
                let name = btf.name(ty.name_off).to_owned();
                // Keep the first definition; vmlinux BTF is deduplicated, so there is one.
                btf.structs_by_name.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.types.get(id as usize)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.type_id
                }
                _ => return Some(ty),
            }
        }
        None
    }

    /// Bit offset of member `name` in `ty`, searching anonymous members too; also returns the
    /// member's type.
    fn find_member(&self, ty: &Type, name: &str) -> Option<(u32, u32)> {
        for member in &ty.members {
            if member.name_off != 0 && self.name(member.name_off) == name {
                return Some((member.bit_offset, member.type_id));
            }
        }
        for member in &ty.members {
            if member.name_off == 0 {
                let inner = self.resolve(member.type_id)?;
                if (inner.kind == KIND_STRUCT || inner.kind == KIND_UNION)
                    && let Some((offset, type_id)) = self.find_member(inner, name)
                {
                    return Some((member.bit_offset + offset, type_id));
                }
            }
        }
        None
    }

    /// Byte offset of `path` (dot-separated members) in struct `strukt`, or `None` when this
    /// kernel has no such member (or it is a bitfield).
    pub fn member_offset(&self, strukt: &str, path: &str) -> Option<u32> {
        let mut ty = &self.types[*self.structs_by_name.get(strukt)? as usize];
        let mut bits = 0;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let (offset, type_id) = self.find_member(ty, part)?;
            bits += offset;
            if parts.peek().is_some() {
                ty = self.resolve(type_id)?;
            }
        }
        (bits % 8 == 0).then_some(bits / 8)
    }

    /// Resolves every offset in [`KernelOffsets::FIELDS`]; the missing ones stay [`MISSING`] and
    /// are named in the returned list.
    pub fn kernel_offsets(&self) -> (KernelOffsets, Vec<&'static str>) {
        let mut offsets = KernelOffsets::UNSET;
        let mut missing = Vec::new();
        for &(field, strukt, path) in KernelOffsets::FIELDS {
            match self.member_offset(strukt, path) {
                Some(offset) => {
                    offsets.set(field, offset);
                }
                None => {
                    offsets.set(field, MISSING);
                    missing.push(field);
                }
            }
        }
        (offsets, missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF by hand: `struct outer { int a; union { int b; struct inner c; }; }` with
    /// `struct inner { long x; long y; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0inner\0x\0y\0long\0";
        let name = |s: &str| {
            let needle = format!("\0{s}\0");
            (strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap()
                + 1) as u32
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (4 bytes)
        push(&[name("int"), KIND_INT << 24, 4, 32]);
        // 2: long (8 bytes)
        push(&[name("long"), KIND_INT << 24, 8, 64]);
        // 3: struct inner { long x @0; long y @64 bits }
        push(&[
            name("inner"),
            KIND_STRUCT << 24 | 2,
            16,
            name("x"),
            2,
            0,
            name("y"),
            2,
            64,
        ]);
        // 4: anonymous union { int b; struct inner c; }
        push(&[
            0,
            KIND_UNION << 24 | 2,
            16,
            name("b"),
            1,
            0,
            name("c"),
            3,
            0,
        ]);
        // 5: struct outer { int a @0; union @64 bits }
        push(&[
            name("outer"),
            KIND_STRUCT << 24 | 2,
            24,
            name("a"),
            1,
            0,
            0,
            4,
            64,
        ]);
        let mut data = Vec::new();
        data.extend_from_slice(&MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&w.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(strings);
        data
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a"), Some(0));
        assert_eq!(btf.member_offset("outer", "b"), Some(8));
        assert_eq!(btf.member_offset("outer", "c"), Some(8));
        assert_eq!(btf.member_offset("outer", "c.y"), Some(16));
        assert_eq!(btf.member_offset("outer", "nope"), None);
        assert_eq!(btf.member_offset("nope", "a"), None);
    }

    #[test]
    fn refuses_garbage() {
        assert!(matches!(
            Btf::parse(b"hello world, not btf"),
            Err(BtfError::Malformed(_))
        ));
        assert!(matches!(Btf::parse(&[]), Err(BtfError::Malformed(_))));
        let mut truncated = sample();
        truncated.truncate(40);
        assert!(Btf::parse(&truncated).is_err());
    }

    /// On a machine with BTF, every offset the programs need resolves.
    #[test]
    fn running_kernel_has_every_offset() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("skipping: {VMLINUX_BTF} not present (kernel without CONFIG_DEBUG_INFO_BTF)");
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let (offsets, missing) = btf.kernel_offsets();
        assert!(missing.is_empty(), "missing offsets: {missing:?}");
        assert_ne!(offsets.task_start_boottime, MISSING);
    }
}
