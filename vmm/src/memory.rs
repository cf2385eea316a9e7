//! Guest memory: one anonymous, lazily-populated mapping per region.

/// The guest memory type used by every device (no dirty-page bitmap).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
