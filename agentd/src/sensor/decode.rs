//! Ring-buffer records → typed events.
//!
//! The kernel writes the `sensor_common::event` structs; this module checks each record's kind
//! and length before reading it, and turns the fixed-size byte arrays into owned values. It never
//! trusts a length field beyond the array it describes.

use sensor_common::event::{
    CgroupEvent, EventHeader, EventKind, ExecEvent, ExitEvent, FileEvent, ForkEvent, NetEvent,
    UnknownKind,
};

/// A record that could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its kind's struct.
    #[error("record of kind {kind} is {len} bytes, expected at least {expected}")]
    Short {
        /// The kind id.
        kind: u32,
        /// The record's length.
        len: usize,
        /// The struct's size.
        expected: usize,
    },
    /// An unknown kind id.
    #[error("unknown record kind {}", .0.0)]
    UnknownKind(UnknownKind),
}

/// One decoded record.
#[derive(Clone, Copy)]
#[expect(
    clippy::large_enum_variant,
    reason = "decoded and consumed one at a time on the stack; boxing would allocate per event"
)]
pub enum SensorEvent {
    /// [`EventKind::Exec`].
    Exec(ExecEvent),
    /// [`EventKind::Fork`].
    Fork(ForkEvent),
    /// [`EventKind::Exit`].
    Exit(ExitEvent),
    /// [`EventKind::FileOpen`], [`EventKind::FileUnlink`], [`EventKind::FileRename`].
    File(FileEvent),
    /// [`EventKind::NetConnect`], [`EventKind::NetUdpSend`], [`EventKind::NetListen`],
    /// [`EventKind::NetAccept`].
    Net(NetEvent),
    /// [`EventKind::CgroupMkdir`], [`EventKind::CgroupRmdir`].
    Cgroup(CgroupEvent),
}

impl SensorEvent {
    /// The common header.
    pub fn header(&self) -> &EventHeader {
        match self {
            SensorEvent::Exec(ev) => &ev.hdr,
            SensorEvent::Fork(ev) => &ev.hdr,
            SensorEvent::Exit(ev) => &ev.hdr,
            SensorEvent::File(ev) => &ev.hdr,
            SensorEvent::Net(ev) => &ev.hdr,
            SensorEvent::Cgroup(ev) => &ev.hdr,
        }
    }

    /// The common header, mutably (attribution rewrites pending bindings).
    pub fn header_mut(&mut self) -> &mut EventHeader {
        match self {
            SensorEvent::Exec(ev) => &mut ev.hdr,
            SensorEvent::Fork(ev) => &mut ev.hdr,
            SensorEvent::Exit(ev) => &mut ev.hdr,
            SensorEvent::File(ev) => &mut ev.hdr,
            SensorEvent::Net(ev) => &mut ev.hdr,
            SensorEvent::Cgroup(ev) => &mut ev.hdr,
        }
    }

    /// The record's kind.
    pub fn kind(&self) -> EventKind {
        // The kind was checked when the record was decoded.
        EventKind::try_from(self.header().kind).unwrap_or(EventKind::Exec)
    }
}

/// Reads a `T` from the front of `bytes` after checking the length.
fn read<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    let expected = size_of::<T>();
    if bytes.len() < expected {
        return Err(DecodeError::Short {
            kind,
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: `bytes` holds at least size_of::<T>() bytes, `read_unaligned` has no alignment
    // requirement, and every `T` used here is a plain-integer wire struct (sensor_common) that is
    // valid for any bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<SensorEvent, DecodeError> {
    let header: EventHeader = read(bytes, 0)?;
    let kind = EventKind::try_from(header.kind).map_err(DecodeError::UnknownKind)?;
    let raw = header.kind;
    Ok(match kind {
        EventKind::Exec => SensorEvent::Exec(read(bytes, raw)?),
        EventKind::Fork => SensorEvent::Fork(read(bytes, raw)?),
        EventKind::Exit => SensorEvent::Exit(read(bytes, raw)?),
        EventKind::FileOpen | EventKind::FileUnlink | EventKind::FileRename => {
            SensorEvent::File(read(bytes, raw)?)
        }
        EventKind::NetConnect
        | EventKind::NetUdpSend
        | EventKind::NetListen
        | EventKind::NetAccept => SensorEvent::Net(read(bytes, raw)?),
        EventKind::CgroupMkdir | EventKind::CgroupRmdir => SensorEvent::Cgroup(read(bytes, raw)?),
    })
}

/// The valid bytes of a fixed-size string field: at most `len`, at most the array, and never
/// past a NUL.
pub fn bytes_of(array: &[u8], len: u32) -> &[u8] {
    let len = (len as usize).min(array.len());
    let bytes = &array[..len];
    match bytes.iter().position(|&b| b == 0) {
        Some(nul) => &bytes[..nul],
        None => bytes,
    }
}

/// The arguments of an exec, split at their NULs (the kernel keeps them NUL-separated).
pub fn split_argv(array: &[u8], len: u32) -> Vec<&[u8]> {
    let len = (len as usize).min(array.len());
    let bytes = &array[..len];
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes.split(|&b| b == 0).collect()
}

#[cfg(test)]
mod tests {
    use sensor_common::event::{COMM_LEN, PATH_LEN};

    use super::*;

    fn header(kind: EventKind) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            flags: 0,
            ktime_ns: 1,
            tgid: 42,
            tid: 43,
            start_ns: 7,
            cgroup_id: 9,
            uid: 1000,
            gid: 1000,
            agent: Default::default(),
            how: 0,
            _pad: 0,
            comm: [b'x'; COMM_LEN],
        }
    }

    fn bytes_of_struct<T>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain wire struct.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn decodes_a_fork() {
        let ev = ForkEvent {
            hdr: header(EventKind::Fork),
            child_tgid: 77,
            _pad: 0,
            child_start_ns: 99,
        };
        match decode(&bytes_of_struct(&ev)).unwrap() {
            SensorEvent::Fork(got) => {
                assert_eq!(got.child_tgid, 77);
                assert_eq!(got.hdr.tgid, 42);
            }
            _ => panic!("wrong kind"),
        }
    }

    #[test]
    fn refuses_short_and_unknown_records() {
        let ev = ForkEvent {
            hdr: header(EventKind::Fork),
            child_tgid: 77,
            _pad: 0,
            child_start_ns: 99,
        };
        let bytes = bytes_of_struct(&ev);
        assert!(matches!(
            decode(&bytes[..90]),
            Err(DecodeError::Short { .. })
        ));
        assert!(matches!(
            decode(&bytes[..10]),
            Err(DecodeError::Short { .. })
        ));
        let mut unknown = ev;
        unknown.hdr.kind = 999;
        assert_eq!(
            decode(&bytes_of_struct(&unknown)).err(),
            Some(DecodeError::UnknownKind(UnknownKind(999)))
        );
    }

    #[test]
    fn string_fields_stop_at_len_and_nul() {
        let mut array = [0u8; PATH_LEN];
        array[..5].copy_from_slice(b"/tmp\0");
        assert_eq!(bytes_of(&array, 4), b"/tmp");
        assert_eq!(bytes_of(&array, 9999), b"/tmp");
        assert_eq!(bytes_of(&array, 2), b"/t");
    }

    #[test]
    fn argv_splits_at_nul() {
        let mut array = [0u8; 32];
        array[..14].copy_from_slice(b"ls\0-l\0/tmp\0\0x\0");
        assert_eq!(split_argv(&array, 11), vec![&b"ls"[..], b"-l", b"/tmp"]);
        assert_eq!(split_argv(&array, 0), Vec::<&[u8]>::new());
    }
}
