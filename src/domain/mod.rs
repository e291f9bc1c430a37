//! What the responder reasons about, decided without calling AWS.

pub mod evidence;
pub mod finding;
pub mod forensic;
pub mod outcome;
pub mod settings;
