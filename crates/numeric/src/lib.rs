//! quantsmith's numeric core: element codecs, quantization schemes, packing, dequantization
//! kernels and error metrics. Pure functions over slices: no I/O, no printing, deterministic.

pub mod alloc;
pub mod awq;
pub mod dtype;
pub mod fp8;
pub mod ggml;
pub mod gptq;
pub mod layout;
pub mod limits;
pub mod linalg;
pub mod metrics;
pub mod pack;
pub mod rtn;
pub mod search;
pub mod signround;
pub mod simd;
pub mod synth;

pub use dtype::DType;
pub use ggml::GgmlType;
pub use layout::{Granularity, Layout, Scheme, SchemeError, Slot, SlotType, TensorStats};
pub use metrics::{ErrorStats, ErrorSummary, NarrowingAudit};
