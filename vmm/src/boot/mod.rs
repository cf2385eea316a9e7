//! Getting the guest kernel into memory and describing the machine to it.

pub mod pvh;
