//! Names of partition types, as fdisk shows them, for the types a VM disk is likely to hold.
//! The names callers match on are the brief's common vocabulary ("Linux filesystem",
//! "EFI System", "Linux LVM", "Linux swap", "Microsoft basic data", "BIOS boot",
//! "Windows recovery", "extended"); MBR types with a GPT equivalent take the GPT name.

/// GPT type GUIDs (lower case) and their names.
const GPT: &[(&str, &str)] = &[
    ("c12a7328-f81f-11d2-ba4b-00a0c93ec93b", "EFI System"),
    ("21686148-6449-6e6f-744e-656564454649", "BIOS boot"),
    (
        "024dee41-33e7-11d3-9d69-0008c781f39f",
        "MBR partition scheme",
    ),
    ("9e1a2d38-c612-4316-aa26-8b49521e5a8b", "PowerPC PReP boot"),
    ("0fc63daf-8483-4772-8e79-3d69d8477de4", "Linux filesystem"),
    ("e6d6d379-f507-44c2-a23c-238f2a3df928", "Linux LVM"),
    ("0657fd6d-a4ab-43c4-84e5-0933c84b4f4f", "Linux swap"),
    ("a19d880f-05fc-4d3b-a006-743f0f84911e", "Linux RAID"),
    ("44479540-f297-41b2-9af7-d131d5f0458a", "Linux root (x86)"),
    (
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
        "Linux root (x86-64)",
    ),
    ("69dad710-2ce4-4e3c-b16c-21a1d49abed3", "Linux root (ARM)"),
    (
        "b921b045-1df0-41c3-af44-4c6f280d3fae",
        "Linux root (ARM-64)",
    ),
    (
        "72ec70a6-cf74-40e6-bd49-4bda08e8f224",
        "Linux root (RISC-V-64)",
    ),
    ("75250d76-8cc6-458e-bd66-bd47cc81a812", "Linux /usr (x86)"),
    (
        "8484680c-9521-48c6-9c11-b0720656f69e",
        "Linux /usr (x86-64)",
    ),
    (
        "b0e01050-ee5f-4390-949a-9101b17104e9",
        "Linux /usr (ARM-64)",
    ),
    ("933ac7e1-2eb4-4f13-b844-0e14e2aef915", "Linux home"),
    ("3b8f8425-20e0-4f3b-907f-1a25a76f98e8", "Linux server data"),
    (
        "4d21b016-b534-45c2-a9fb-5c16e091fd2d",
        "Linux variable data",
    ),
    (
        "7ec6f557-3bc5-4aca-b293-16ef5df639d1",
        "Linux temporary data",
    ),
    (
        "bc13c2ff-59e6-4262-a352-b275fd6f7172",
        "Linux extended boot",
    ),
    ("8da63339-0007-60c0-c436-083ac8230908", "Linux reserved"),
    ("ca7d7ccb-63ed-4c53-861c-1742536059cc", "Linux LUKS"),
    ("7ffec5c9-2d00-49b7-8941-3ea10a5586b7", "Linux dm-crypt"),
    ("773f91ef-66d4-49b5-bd83-d683bf40ad16", "Linux user's home"),
    ("e3c9e316-0b5c-4db8-817d-f92df00215ae", "Microsoft reserved"),
    (
        "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7",
        "Microsoft basic data",
    ),
    (
        "5808c8aa-7e8f-42e0-85d2-e1e90434cfb3",
        "Microsoft LDM metadata",
    ),
    ("af9b60a0-1431-4f62-bc68-3311714a69ad", "Microsoft LDM data"),
    ("de94bba4-06d1-4d40-a16a-bfd50179d6ac", "Windows recovery"),
    (
        "e75caf8f-f680-4cee-afa3-b001e56efc2d",
        "Microsoft Storage Spaces",
    ),
    ("516e7cb4-6ecf-11d6-8ff8-00022d09712b", "FreeBSD data"),
    ("83bd6b9d-7f41-11dc-be0b-001560b84f0f", "FreeBSD boot"),
    ("516e7cb5-6ecf-11d6-8ff8-00022d09712b", "FreeBSD swap"),
    ("516e7cb6-6ecf-11d6-8ff8-00022d09712b", "FreeBSD UFS"),
    ("516e7cba-6ecf-11d6-8ff8-00022d09712b", "FreeBSD ZFS"),
    ("48465300-0000-11aa-aa11-00306543ecac", "Apple HFS/HFS+"),
    ("7c3457ef-0000-11aa-aa11-00306543ecac", "Apple APFS"),
    (
        "6a898cc3-1dd2-11b2-99a6-080020736631",
        "Solaris /usr & Apple ZFS",
    ),
    ("fe3a2a5d-4f32-41a7-b725-accc3285a309", "ChromeOS kernel"),
    ("3cb8e202-3b7e-47dd-8a3c-7ff2a13cfcec", "ChromeOS root fs"),
    ("aa31e02a-400f-11db-9590-000c2911d1b8", "VMware VMFS"),
    ("4fbd7e29-9d25-41b8-afd0-062c0ceff05d", "Ceph OSD"),
];

/// The name of a GPT type GUID (lower case), "unknown" if not listed.
pub fn gpt_name(guid: &str) -> &'static str {
    GPT.iter()
        .find(|(g, _)| *g == guid)
        .map_or("unknown", |(_, n)| n)
}

/// True for the MBR types that hold a chain of EBRs.
pub fn mbr_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0f | 0x85)
}

/// The name of an MBR type byte, "unknown" if not listed.
pub fn mbr_name(kind: u8) -> &'static str {
    match kind {
        0x01 => "FAT12",
        0x04 => "FAT16 <32M",
        0x05 | 0x0f | 0x85 => "extended",
        0x06 => "FAT16",
        0x07 => "Microsoft basic data",
        0x0b => "W95 FAT32",
        0x0c => "W95 FAT32 (LBA)",
        0x0e => "W95 FAT16 (LBA)",
        0x11 => "Hidden FAT12",
        0x12 => "Compaq diagnostics",
        0x14 => "Hidden FAT16 <32M",
        0x16 => "Hidden FAT16",
        0x17 => "Hidden HPFS/NTFS",
        0x1b => "Hidden W95 FAT32",
        0x1c => "Hidden W95 FAT32 (LBA)",
        0x1e => "Hidden W95 FAT16 (LBA)",
        0x27 => "Windows recovery",
        0x42 => "SFS / Windows LDM",
        0x82 => "Linux swap",
        0x83 => "Linux filesystem",
        0x84 => "Intel hibernation",
        0x86 | 0x87 => "NTFS volume set",
        0x8e => "Linux LVM",
        0xa5 => "FreeBSD",
        0xa6 => "OpenBSD",
        0xa8 => "Darwin UFS",
        0xa9 => "NetBSD",
        0xaf => "HFS / HFS+",
        0xbf => "Solaris",
        0xda => "Non-FS data",
        0xde => "Dell Utility",
        0xe8 => "Linux LUKS",
        0xea => "Linux extended boot",
        0xee => "GPT protective",
        0xef => "EFI System",
        0xfb => "VMware VMFS",
        0xfc => "VMware VMKCORE",
        0xfd => "Linux RAID",
        _ => "unknown",
    }
}
