//! Checks of classic tracepoint record layouts against the kernel's format files.
//!
//! The cgroup programs read `cgroup:cgroup_mkdir`/`cgroup_rmdir` records at fixed offsets; a
//! kernel whose layout differs would feed them garbage, so agentd refuses to start instead.

use std::path::{Path, PathBuf};

use super::SensorError;

/// Where tracefs is mounted, if it is.
pub fn tracefs_root() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.join("events").is_dir())
}

/// `(field, offset, size)` the programs expect in the `cgroup` event class.
const CGROUP_FIELDS: &[(&str, u32, u32)] = &[
    ("root", 8, 4),
    ("level", 12, 4),
    ("id", 16, 8),
    ("path", 24, 4),
];

/// Parses `field:TYPE NAME;\toffset:N;\tsize:M;` lines into `(name, offset, size)`.
fn parse_format(format: &str) -> Vec<(String, u32, u32)> {
    let mut fields = Vec::new();
    for line in format.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';').map(str::trim);
        let Some(decl) = parts.next() else {
            continue;
        };
        let name = decl
            .rsplit(' ')
            .next()
            .unwrap_or("")
            .split('[')
            .next()
            .unwrap_or("");
        let mut offset = None;
        let mut size = None;
        for part in parts {
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        if let (Some(offset), Some(size)) = (offset, size) {
            fields.push((name.to_owned(), offset, size));
        }
    }
    fields
}

fn check(format: &str, expected: &[(&str, u32, u32)]) -> Result<(), String> {
    let fields = parse_format(format);
    for &(name, offset, size) in expected {
        match fields.iter().find(|(n, _, _)| n == name) {
            Some((_, o, s)) if *o == offset && *s == size => {}
            Some((_, o, s)) => {
                return Err(format!(
                    "field {name} at offset {o} size {s}, expected {offset}/{size}"
                ));
            }
            None => return Err(format!("field {name} missing")),
        }
    }
    Ok(())
}

/// Checks both cgroup tracepoints (skipped when tracefs is not mounted: attaching will then
/// fail with its own message).
pub fn check_cgroup_format() -> Result<(), SensorError> {
    let Some(root) = tracefs_root() else {
        return Ok(());
    };
    for tp in ["cgroup_mkdir", "cgroup_rmdir"] {
        let path = root.join("events/cgroup").join(tp).join("format");
        let format = std::fs::read_to_string(&path).unwrap_or_default();
        check(&format, CGROUP_FIELDS).map_err(|detail| SensorError::TracepointFormat {
            tracepoint: format!("cgroup/{tp} ({})", Path::new(&path).display()),
            detail,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MKDIR: &str = "name: cgroup_mkdir\nID: 544\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:int root;\toffset:8;\tsize:4;\tsigned:1;\n\
        \tfield:int level;\toffset:12;\tsize:4;\tsigned:1;\n\
        \tfield:u64 id;\toffset:16;\tsize:8;\tsigned:0;\n\
        \tfield:__data_loc char[] path;\toffset:24;\tsize:4;\tsigned:0;\n";

    #[test]
    fn accepts_the_expected_layout() {
        assert_eq!(check(MKDIR, CGROUP_FIELDS), Ok(()));
    }

    #[test]
    fn names_a_moved_or_missing_field() {
        let moved = MKDIR.replace("offset:16;\tsize:8", "offset:20;\tsize:8");
        assert!(
            check(&moved, CGROUP_FIELDS)
                .unwrap_err()
                .contains("field id at offset 20")
        );
        let missing = MKDIR.replace("int level", "int depth");
        assert_eq!(
            check(&missing, CGROUP_FIELDS).unwrap_err(),
            "field level missing"
        );
    }
}
