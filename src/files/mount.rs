//! The read-only FUSE view of every snapshot (being written).
