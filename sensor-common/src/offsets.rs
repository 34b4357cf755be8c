//! Kernel struct field offsets.
//!
//! Rust eBPF programs get no CO-RE relocations, so a field such as `task_struct.start_boottime`
//! has no fixed offset the program could be compiled with. agentd reads the offsets from the
//! running kernel's BTF (`/sys/kernel/btf/vmlinux`) at start-up and hands them to the programs
//! as the read-only global [`crate::names::OFFSETS_GLOBAL`]. A field the kernel lacks is
//! [`MISSING`]; the programs then skip what depends on it, and agentd says so at start-up.

/// Offset of a field this kernel does not have.
pub const MISSING: u32 = u32::MAX;

macro_rules! offsets {
    ($( $(#[$doc:meta])* $field:ident => $strukt:literal . $path:literal ),* $(,)?) => {
        /// Byte offsets of the kernel fields the programs read.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct KernelOffsets {
            $( $(#[$doc])* pub $field: u32, )*
        }

        impl KernelOffsets {
            /// Every offset [`MISSING`]: the value compiled into the programs.
            pub const UNSET: Self = Self { $( $field: MISSING, )* };

            /// `(field name, struct, member path)` for every offset, in declaration order; the
            /// member path is dot-separated and may pass through anonymous structs and unions.
            pub const FIELDS: &'static [(&'static str, &'static str, &'static str)] = &[
                $( (stringify!($field), $strukt, $path), )*
            ];

            /// Sets the offset named `field`; returns false for an unknown name.
            pub fn set(&mut self, field: &str, value: u32) -> bool {
                match field {
                    $( stringify!($field) => { self.$field = value; true } )*
                    _ => false,
                }
            }

            /// The offset named `field`.
            pub fn get(&self, field: &str) -> Option<u32> {
                match field {
                    $( stringify!($field) => Some(self.$field), )*
                    _ => None,
                }
            }
        }
    };
}

offsets! {
    /// `task_struct.tgid` (`pid_t`).
    task_tgid => "task_struct"."tgid",
    /// `task_struct.pid` (`pid_t`).
    task_pid => "task_struct"."pid",
    /// `task_struct.real_parent` (`struct task_struct *`).
    task_real_parent => "task_struct"."real_parent",
    /// `task_struct.group_leader` (`struct task_struct *`).
    task_group_leader => "task_struct"."group_leader",
    /// `task_struct.start_boottime` (`u64`, ns since boot including suspend).
    task_start_boottime => "task_struct"."start_boottime",
    /// `task_struct.mm` (`struct mm_struct *`).
    task_mm => "task_struct"."mm",
    /// `task_struct.files` (`struct files_struct *`).
    task_files => "task_struct"."files",
    /// `task_struct.exit_code` (`int`).
    task_exit_code => "task_struct"."exit_code",
    /// `mm_struct.arg_start` (`unsigned long`).
    mm_arg_start => "mm_struct"."arg_start",
    /// `mm_struct.arg_end` (`unsigned long`).
    mm_arg_end => "mm_struct"."arg_end",
    /// `linux_binprm.file` (`struct file *`): what the kernel runs.
    bprm_file => "linux_binprm"."file",
    /// `linux_binprm.executable` (`struct file *`): the script when an interpreter runs one.
    bprm_executable => "linux_binprm"."executable",
    /// `linux_binprm.filename` (`const char *`).
    bprm_filename => "linux_binprm"."filename",
    /// `file.f_inode` (`struct inode *`).
    file_inode => "file"."f_inode",
    /// `file.private_data` (`void *`; a `struct socket *` for sockets).
    file_private_data => "file"."private_data",
    /// `inode.i_ino` (`unsigned long`).
    inode_ino => "inode"."i_ino",
    /// `inode.i_sb` (`struct super_block *`).
    inode_sb => "inode"."i_sb",
    /// `inode.i_ctime_sec` (`time64_t`).
    inode_ctime_sec => "inode"."i_ctime_sec",
    /// `inode.i_ctime_nsec` (`u32`).
    inode_ctime_nsec => "inode"."i_ctime_nsec",
    /// `super_block.s_dev` (`dev_t`).
    sb_dev => "super_block"."s_dev",
    /// `files_struct.fdt` (`struct fdtable *`).
    files_fdt => "files_struct"."fdt",
    /// `fdtable.max_fds` (`unsigned int`).
    fdt_max_fds => "fdtable"."max_fds",
    /// `fdtable.fd` (`struct file **`).
    fdt_fd => "fdtable"."fd",
    /// `socket.sk` (`struct sock *`).
    socket_sk => "socket"."sk",
    /// `sock.sk_type` (`u16`).
    sk_type => "sock"."sk_type",
    /// `sock.sk_protocol` (`u16`).
    sk_protocol => "sock"."sk_protocol",
    /// `sock.__sk_common.skc_family` (`unsigned short`).
    skc_family => "sock"."__sk_common.skc_family",
    /// `sock.__sk_common.skc_daddr` (`__be32`).
    skc_daddr => "sock"."__sk_common.skc_daddr",
    /// `sock.__sk_common.skc_rcv_saddr` (`__be32`).
    skc_rcv_saddr => "sock"."__sk_common.skc_rcv_saddr",
    /// `sock.__sk_common.skc_dport` (`__be16`).
    skc_dport => "sock"."__sk_common.skc_dport",
    /// `sock.__sk_common.skc_num` (`__u16`, host order).
    skc_num => "sock"."__sk_common.skc_num",
    /// `sock.__sk_common.skc_v6_daddr` (`struct in6_addr`).
    skc_v6_daddr => "sock"."__sk_common.skc_v6_daddr",
    /// `sock.__sk_common.skc_v6_rcv_saddr` (`struct in6_addr`).
    skc_v6_rcv_saddr => "sock"."__sk_common.skc_v6_rcv_saddr",
}

const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 4 * 33);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_settable_by_name() {
        let mut offsets = KernelOffsets::UNSET;
        for (i, (field, _, _)) in KernelOffsets::FIELDS.iter().enumerate() {
            assert!(offsets.set(field, i as u32));
            assert_eq!(offsets.get(field), Some(i as u32));
        }
        assert!(!offsets.set("no_such_field", 1));
        assert_eq!(
            KernelOffsets::FIELDS.len() * 4,
            core::mem::size_of::<KernelOffsets>()
        );
    }
}
