//! Shared pieces of the husk fuzz targets: a byte cursor for the inputs, a
//! fake virtio driver (split rings in guest memory), per-process scratch
//! directories, and the encoders the seed generator (`gen-corpus`) uses.
//!
//! Input formats are small byte-code streams (one opcode byte, then its
//! operands), not `arbitrary` derives: the seed generator can then write
//! valid inputs with the same encoders, and a missing byte reads as zero, so
//! every byte string is an input.

pub mod cursor;
pub mod ring;
pub mod scratch;
