//! Jetson (and x86) device profiles, detection of the board and its software from
//! `/proc`, `/etc` and `/sys` (under an injectable root, so tests use recorded files),
//! and the memory planner that decides, before anything is loaded, whether a bundle
//! fits a device and what would make it fit.

mod detect;
mod error;
mod plan;
mod profile;

pub use detect::{detect, jetpack_for_l4t, HostInfo};
pub use error::DeviceError;
pub use plan::{plan, Outcome, Plan, PlanParts, PlanSettings, MAX_FACE_DETECTORS};
pub use profile::{
    find as find_profile, load_profiles, profile_dirs, AsrPlacement, Profile, ProfileDefaults, Residency,
};
