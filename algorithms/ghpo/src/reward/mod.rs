//! Rewards of a completion: is its final answer right ([`verify`]), and does it
//! follow the think/answer format ([`format`]).

pub mod format;
pub mod verify;

pub use format::format_reward;
pub use verify::{accuracy_reward, equivalent, extract_answer};
