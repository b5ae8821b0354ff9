//! Wire protocols, I/O-free: parsers on byte buffers that return what they consumed, and encoders
//! for the replies the proxy makes itself.

pub mod resp;
