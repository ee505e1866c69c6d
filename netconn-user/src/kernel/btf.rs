//! Just enough of a BTF reader to find struct member offsets in the running
//! kernel (/sys/kernel/btf/vmlinux). The eBPF program is written in Rust,
//! which has no CO-RE field relocations, so the agent resolves the few
//! offsets it needs here and writes them into the program before loading.
//!
//! Format: include/uapi/linux/btf.h (header, type section, string section).

use std::{collections::HashMap, path::Path};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source} (kernel built without CONFIG_DEBUG_INFO_BTF?)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no {0}")]
    Missing(String),
}

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
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

struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
}

struct Type {
    kind: u32,
    name_off: u32,
    /// Referenced type for PTR/TYPEDEF/CONST/...; unused otherwise.
    type_id: u32,
    members: Vec<Member>,
}

pub struct Btf {
    types: Vec<Type>, // index = type id; id 0 is void
    strings: Vec<u8>,
    structs_by_name: HashMap<String, u32>,
    typedefs_by_name: HashMap<String, u32>,
}

impl Btf {
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        Self::from_file(Path::new(VMLINUX))
    }

    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        let u32_at = |off: usize| -> Result<u32, BtfError> {
            data.get(off..off + 4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(BtfError::Malformed("truncated"))
        };
        let magic = data
            .get(0..2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or(BtfError::Malformed("truncated header"))?;
        if magic != BTF_MAGIC {
            return Err(BtfError::Malformed("bad magic (not native-endian BTF)"));
        }
        let hdr_len = u32_at(4)? as usize;
        let type_off = u32_at(8)? as usize;
        let type_len = u32_at(12)? as usize;
        let str_off = u32_at(16)? as usize;
        let str_len = u32_at(20)? as usize;
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
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
        let mut off = types_start;
        while off < types_end {
            let name_off = u32_at(off)?;
            let info = u32_at(off + 4)?;
            let size_or_type = u32_at(off + 8)?;
            off += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => off += 4,
                KIND_ARRAY => off += 12,
                KIND_STRUCT | KIND_UNION => {
                    members.reserve(vlen);
                    for _ in 0..vlen {
                        let offset = u32_at(off + 8)?;
                        members.push(Member {
                            name_off: u32_at(off)?,
                            type_id: u32_at(off + 4)?,
                            // With kind_flag the top 8 bits are a bitfield size.
                            bit_offset: if kind_flag {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                        });
                        off += 12;
                    }
                }
                KIND_ENUM => off += 8 * vlen,
                KIND_FUNC_PROTO => off += 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => off += 12 * vlen,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => {}
                _ => return Err(BtfError::Malformed("unknown BTF kind")),
            }
            types.push(Type {
                kind,
                name_off,
                type_id: size_or_type,
                members,
            });
        }

        let mut btf = Btf {
            types,
            strings,
            structs_by_name: HashMap::new(),
            typedefs_by_name: HashMap::new(),
        };
        for (id, ty) in btf.types.iter().enumerate() {
            let index = match ty.kind {
                KIND_STRUCT | KIND_UNION => &mut btf.structs_by_name,
                KIND_TYPEDEF => &mut btf.typedefs_by_name,
                _ => continue,
            };
            let name = string_at(&btf.strings, ty.name_off);
            if !name.is_empty() {
                // The first definition wins; duplicates are identical.
                index.entry(name.to_string()).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    /// Whether a type alias such as `btf_trace_inet_sock_set_state` (which
    /// the kernel defines for every BTF tracepoint) exists.
    pub fn has_typedef(&self, name: &str) -> bool {
        self.typedefs_by_name.contains_key(name)
    }

    /// Byte offset of the member reached by `path` (e.g. `["skc_net", "net"]`)
    /// from the start of struct `name`, looking through anonymous members.
    pub fn offset_of(&self, name: &str, path: &[&str]) -> Result<u32, BtfError> {
        let what = || format!("{name}.{}", path.join("."));
        let mut id = *self
            .structs_by_name
            .get(name)
            .ok_or_else(|| BtfError::Missing(format!("struct {name}")))?;
        let mut bits = 0u32;
        for field in path {
            let (member_id, member_bits) = self
                .find_member(id, field)
                .ok_or_else(|| BtfError::Missing(what()))?;
            bits += member_bits;
            id = self.strip(member_id);
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::Missing(format!("{} (bitfield)", what())));
        }
        Ok(bits / 8)
    }

    /// Member `field` of struct/union `id`: (its type id, its bit offset),
    /// searching anonymous struct/union members recursively.
    fn find_member(&self, id: u32, field: &str) -> Option<(u32, u32)> {
        let ty = self.types.get(id as usize)?;
        for m in &ty.members {
            let name = string_at(&self.strings, m.name_off);
            if name == field {
                return Some((m.type_id, m.bit_offset));
            }
            if name.is_empty() {
                let inner = self.strip(m.type_id);
                if let Some((t, bits)) = self.find_member(inner, field) {
                    return Some((t, m.bit_offset + bits));
                }
            }
        }
        None
    }

    /// Follow typedef/const/volatile/restrict/type_tag to the real type.
    fn strip(&self, mut id: u32) -> u32 {
        while let Some(ty) = self.types.get(id as usize) {
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.type_id
                }
                _ => break,
            }
        }
        id
    }
}

fn string_at(strings: &[u8], off: u32) -> &str {
    let rest = strings.get(off as usize..).unwrap_or_default();
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs the running kernel's BTF; every supported kernel has these.
    #[test]
    fn finds_sock_offsets_in_running_kernel() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipped: no {VMLINUX}");
            return;
        };
        // skc_family has sat at byte 16 of sock_common for many years.
        assert_eq!(btf.offset_of("sock_common", &["skc_family"]).unwrap(), 16);
        let net = btf.offset_of("sock_common", &["skc_net", "net"]).unwrap();
        assert!(net > 16 && net < 200, "skc_net at {net}");
        btf.offset_of("net", &["ns", "inum"]).unwrap();
        assert!(btf.has_typedef("btf_trace_inet_sock_set_state"));
        assert!(btf.offset_of("sock_common", &["no_such_field"]).is_err());
    }
}
