//! The AWS pieces the steps share.

pub mod calls;
pub mod context;
pub mod evidence;
pub mod instance;
pub mod pause;
pub mod profile;
pub mod role_policy;
pub mod tags;
