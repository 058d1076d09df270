//! The burn backends attrib can be compiled with, one Cargo feature each, and the run-time
//! choice among those compiled in.
//!
//! No other crate of the project names a concrete backend: code that runs a model is written
//! once as a [`BackendJob`], generic over `B: Backend`, and [`run`] instantiates it for the
//! backend the user picked.

use std::fmt;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Element, FloatDType};

/// The burn release this crate is built against (pinned with `=` in the workspace manifest).
pub const BURN_VERSION: &str = "0.21.0";

/// A backend attrib knows about, compiled in or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// burn-cuda (NVIDIA GPUs, CubeCL).
    Cuda,
    /// burn-tch (libtorch: CPU, CUDA or MPS).
    Tch,
    /// burn-wgpu on Metal (Apple GPUs).
    Metal,
    /// burn-wgpu on Vulkan.
    Vulkan,
    /// burn-wgpu with the graphics API wgpu picks.
    Wgpu,
    /// burn-flex, the fast CPU backend.
    Flex,
    /// burn-ndarray, the reference CPU backend.
    Ndarray,
}

impl BackendKind {
    /// Every backend, fastest first: the order in which a default is chosen (tch only where
    /// libtorch sees a GPU; on the CPU it comes after the others). On an H200, tch's
    /// attribution of the 1.5B model took 0.3-0.5 s after a 2 s load; burn-cuda's took
    /// 0.4-0.7 s with its kernels cached (3-5 s compiling them) after a 15 s load.
    pub const ALL: [BackendKind; 7] = [
        BackendKind::Tch,
        BackendKind::Cuda,
        BackendKind::Metal,
        BackendKind::Vulkan,
        BackendKind::Wgpu,
        BackendKind::Flex,
        BackendKind::Ndarray,
    ];

    /// The name used by `--backend` and the Cargo feature that compiles it in.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cuda => "cuda",
            BackendKind::Tch => "tch",
            BackendKind::Metal => "metal",
            BackendKind::Vulkan => "vulkan",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Flex => "flex",
            BackendKind::Ndarray => "ndarray",
        }
    }

    /// Whether this binary was compiled with the backend's feature.
    pub fn is_compiled(self) -> bool {
        match self {
            BackendKind::Cuda => cfg!(feature = "cuda"),
            BackendKind::Tch => cfg!(feature = "tch"),
            BackendKind::Metal => cfg!(feature = "metal"),
            BackendKind::Vulkan => cfg!(feature = "vulkan"),
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
            BackendKind::Flex => cfg!(feature = "flex"),
            BackendKind::Ndarray => cfg!(feature = "ndarray"),
        }
    }

    /// The devices `--device` accepts for this backend, for help and error text.
    pub fn device_help(self) -> &'static str {
        match self {
            BackendKind::Cuda => "cuda:N (default cuda:0)",
            BackendKind::Tch => {
                "cpu, cuda:N or mps (default: cuda:0 if libtorch sees CUDA, else cpu)"
            }
            BackendKind::Metal | BackendKind::Vulkan | BackendKind::Wgpu => {
                "default, discrete:N, integrated:N, virtual:N or cpu (default: default)"
            }
            BackendKind::Flex | BackendKind::Ndarray => "cpu",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The backends compiled into this binary, fastest first.
pub fn compiled() -> Vec<BackendKind> {
    BackendKind::ALL
        .into_iter()
        .filter(|k| k.is_compiled())
        .collect()
}

/// The backend used without `--backend`: the first compiled in, except that libtorch without
/// CUDA (several times slower than flex on the CPU) is taken only when nothing else is there.
fn default_kind() -> Option<BackendKind> {
    let kinds = compiled();
    kinds
        .iter()
        .copied()
        .find(|k| *k != BackendKind::Tch || tch_has_cuda())
        .or(kinds.first().copied())
}

/// The floating-point type a model computes in (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// 32-bit floats: every backend, and what the reference computations use.
    #[default]
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16 (f32's exponent range, 8 bits of mantissa).
    Bf16,
}

impl Precision {
    /// Every precision, in `--dtype`'s order.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::F16, Precision::Bf16];

    /// The name `--dtype` takes and the JSON carries.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }

    /// Parses a `--dtype` value.
    pub fn parse(name: &str) -> Result<Self, BackendError> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| BackendError::UnknownDtype(name.to_string()))
    }

    fn float(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::F16 => FloatDType::F16,
            Precision::Bf16 => FloatDType::BF16,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `--backend`, `--device` or `--dtype` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The binary was built without any backend feature.
    #[error("this binary was built without a backend; rebuild with --features ndarray (or flex, wgpu, metal, vulkan, tch, cuda)")]
    NoneCompiled,
    /// The name is not a backend at all.
    #[error("--backend {0:?} is not a backend; choose one of: {list}", list = names(&compiled()))]
    Unknown(String),
    /// The backend exists but this binary was built without it.
    #[error("--backend {0} is not compiled into this binary (compiled: {list}); rebuild with --features {0}", list = names(&compiled()))]
    NotCompiled(BackendKind),
    /// The device string does not name a device of the backend.
    #[error("--device {device:?} is not a device of the {backend} backend; use {help}", help = backend.device_help())]
    BadDevice {
        /// The backend.
        backend: BackendKind,
        /// What the user gave.
        device: String,
    },
    /// The name is not a precision at all.
    #[error("--dtype {0:?} is not a precision; choose one of: f32, f16, bf16")]
    UnknownDtype(String),
    /// The backend cannot compute in that precision on that device.
    #[error("--dtype {dtype} is not supported by the {backend} backend on {device}; use f32")]
    UnsupportedDtype {
        /// The backend.
        backend: BackendKind,
        /// Its device.
        device: String,
        /// What the user asked for.
        dtype: Precision,
    },
}

fn names(kinds: &[BackendKind]) -> String {
    kinds
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A validated choice of backend and device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The backend.
    pub kind: BackendKind,
    /// The device, normalised (`cpu`, `cuda:0`, `default`, …).
    pub device: String,
    /// The floating-point type the model's weights and activations are held in.
    pub dtype: Precision,
}

impl Selection {
    /// Validates `--backend`, `--device` and `--dtype`; `None` picks the fastest compiled
    /// backend, its default device, and f32. A precision other than f32 is checked against
    /// what the backend supports on that device (for a GPU backend this starts its runtime).
    pub fn parse(
        backend: Option<&str>,
        device: Option<&str>,
        dtype: Option<&str>,
    ) -> Result<Self, BackendError> {
        let kind = match backend {
            None => default_kind().ok_or(BackendError::NoneCompiled)?,
            Some(name) => {
                let kind = BackendKind::ALL
                    .into_iter()
                    .find(|k| k.name().eq_ignore_ascii_case(name.trim()))
                    .ok_or_else(|| BackendError::Unknown(name.to_string()))?;
                if !kind.is_compiled() {
                    return Err(BackendError::NotCompiled(kind));
                }
                kind
            }
        };
        let device = normalise_device(kind, device)?;
        let dtype = dtype.map(Precision::parse).transpose()?.unwrap_or_default();
        let selection = Self {
            kind,
            device,
            dtype,
        };
        if dtype != Precision::F32 && !dispatch(&selection, Supports, false) {
            return Err(BackendError::UnsupportedDtype {
                backend: kind,
                device: selection.device,
                dtype,
            });
        }
        Ok(selection)
    }
}

/// Checks a device string against the backend and fills in the default.
fn normalise_device(kind: BackendKind, device: Option<&str>) -> Result<String, BackendError> {
    let bad = || BackendError::BadDevice {
        backend: kind,
        device: device.unwrap_or_default().to_string(),
    };
    let given = device.map(|d| d.trim().to_ascii_lowercase());
    let indexed = |d: &str, prefix: &str| -> Option<usize> {
        d.strip_prefix(prefix)?.strip_prefix(':')?.parse().ok()
    };
    match kind {
        BackendKind::Ndarray | BackendKind::Flex => match given.as_deref() {
            None | Some("cpu") => Ok("cpu".into()),
            _ => Err(bad()),
        },
        BackendKind::Cuda => match given.as_deref() {
            None | Some("cuda") => Ok("cuda:0".into()),
            Some(d) => indexed(d, "cuda")
                .map(|i| format!("cuda:{i}"))
                .ok_or_else(bad),
        },
        BackendKind::Tch => match given.as_deref() {
            None => Ok(if tch_has_cuda() { "cuda:0" } else { "cpu" }.into()),
            Some("cpu") | Some("mps") => Ok(given.unwrap_or_default()),
            Some("cuda") => Ok("cuda:0".into()),
            Some(d) => indexed(d, "cuda")
                .map(|i| format!("cuda:{i}"))
                .ok_or_else(bad),
        },
        BackendKind::Metal | BackendKind::Vulkan | BackendKind::Wgpu => match given.as_deref() {
            None | Some("default") => Ok("default".into()),
            Some("cpu") => Ok("cpu".into()),
            Some(d) => ["discrete", "integrated", "virtual"]
                .iter()
                .find_map(|p| indexed(d, p).map(|i| format!("{p}:{i}")))
                .ok_or_else(bad),
        },
    }
}

#[cfg(feature = "tch")]
fn tch_has_cuda() -> bool {
    tch::Cuda::is_available()
}

#[cfg(not(feature = "tch"))]
fn tch_has_cuda() -> bool {
    false
}

/// Work to run on whichever backend was selected.
pub trait BackendJob {
    /// What the job returns.
    type Output;
    /// Runs the job on backend `B` and `device`. Jobs that need gradients wrap `B` in
    /// `burn::backend::Autodiff<B>` themselves.
    fn run<B: Backend>(self, device: B::Device, selection: &Selection) -> Self::Output;
}

/// The device index after `prefix:` in a normalised device string.
#[allow(dead_code)]
fn index_of(device: &str) -> usize {
    device
        .split_once(':')
        .and_then(|(_, i)| i.parse().ok())
        .unwrap_or(0)
}

#[cfg(any(feature = "wgpu", feature = "metal", feature = "vulkan"))]
fn wgpu_device(device: &str) -> burn::backend::wgpu::WgpuDevice {
    use burn::backend::wgpu::WgpuDevice;
    match device.split_once(':').map(|(p, _)| p).unwrap_or(device) {
        "cpu" => WgpuDevice::Cpu,
        "discrete" => WgpuDevice::DiscreteGpu(index_of(device)),
        "integrated" => WgpuDevice::IntegratedGpu(index_of(device)),
        "virtual" => WgpuDevice::VirtualGpu(index_of(device)),
        _ => WgpuDevice::DefaultDevice,
    }
}

/// Whether the backend computes in the selection's precision on its device.
struct Supports;

impl BackendJob for Supports {
    type Output = bool;

    fn run<B: Backend>(self, device: B::Device, selection: &Selection) -> bool {
        B::supports_dtype(&device, DType::from(selection.dtype.float()))
    }
}

/// Makes `dtype` the precision every float tensor created on `device` takes (burn's device
/// settings, shared by `B` and `Autodiff<B>`). The settings of a device are fixed once its
/// first tensor is made, so one process computes in one precision per device.
fn use_precision<B: Backend>(device: &B::Device, dtype: Precision) {
    let int = <B::IntElem as Element>::dtype();
    if burn::tensor::set_default_dtypes::<B>(device, dtype.float(), int).is_err() {
        let current = burn::tensor::get_device_settings::<B>(device).float_dtype;
        assert_eq!(
            current,
            dtype.float(),
            "{device:?} already computes in {current:?}; one process uses one --dtype per device"
        );
    }
}

/// Runs `job` on the selected backend, device and precision.
pub fn run<J: BackendJob>(selection: &Selection, job: J) -> J::Output {
    dispatch(selection, job, true)
}

/// Runs `job` on the selected backend and device, in the selected precision if `set` (else
/// without touching the device's settings).
fn dispatch<J: BackendJob>(selection: &Selection, job: J, set: bool) -> J::Output {
    let device = selection.device.as_str();
    let _ = device;
    match selection.kind {
        #[cfg(feature = "ndarray")]
        BackendKind::Ndarray => {
            on::<burn::backend::NdArray<f32>, J>(Default::default(), selection, job, set)
        }
        #[cfg(feature = "flex")]
        BackendKind::Flex => {
            on::<burn::backend::Flex<f32>, J>(Default::default(), selection, job, set)
        }
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            on::<burn::backend::Wgpu<f32>, J>(wgpu_device(device), selection, job, set)
        }
        #[cfg(feature = "metal")]
        BackendKind::Metal => {
            on::<burn::backend::Metal<f32>, J>(wgpu_device(device), selection, job, set)
        }
        #[cfg(feature = "vulkan")]
        BackendKind::Vulkan => {
            on::<burn::backend::Vulkan<f32>, J>(wgpu_device(device), selection, job, set)
        }
        #[cfg(feature = "tch")]
        BackendKind::Tch => {
            use burn::backend::libtorch::LibTorchDevice;
            let dev = match device {
                "cpu" => LibTorchDevice::Cpu,
                "mps" => LibTorchDevice::Mps,
                _ => LibTorchDevice::Cuda(index_of(device)),
            };
            on::<burn::backend::LibTorch<f32>, J>(dev, selection, job, set)
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            keep_compiled_kernels();
            let dev = burn::backend::cuda::CudaDevice::new(index_of(device));
            on::<burn::backend::Cuda<f32>, J>(dev, selection, job, set)
        }
        #[allow(unreachable_patterns)]
        other => unreachable!("{other} is not compiled in; Selection::parse refuses it"),
    }
}

/// Turns on CubeCL's cache of compiled CUDA kernels unless a `cubecl.toml` (or `burn.toml`)
/// in the working directory or above already chose a cache location. Without it every
/// process compiles each kernel with NVRTC again: 3-5 s of a 1.5B attribution on an H200,
/// against 0.4-0.7 s once the kernels are cached. The cache goes where CubeCL's `target`
/// option puts it: the enclosing Cargo project's `target/`, else the user's cache directory;
/// where that cannot be written, no cache (CubeCL would stop the process when it first
/// writes a kernel there).
#[cfg(feature = "cuda")]
fn keep_compiled_kernels() {
    use cubecl_runtime::config::{cache::CacheConfig, CubeClRuntimeConfig, RuntimeConfig};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if CubeClRuntimeConfig::storage().lock().is_some() {
            return; // already read by a runtime started earlier in this process
        }
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        if config.compilation.cache.is_none() && writable(&CacheConfig::Target.root()) {
            config.compilation.cache = Some(CacheConfig::Target);
        }
        CubeClRuntimeConfig::set(config);
    });
}

/// Whether files can be created in `dir` (made if missing).
#[cfg(feature = "cuda")]
fn writable(dir: &std::path::Path) -> bool {
    let probe = dir.join(format!(".attrib-probe-{}", std::process::id()));
    let ok = std::fs::create_dir_all(dir).is_ok() && std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// `job` on backend `B`; the backend's element type is only its default: the precision is
/// burn's device setting (`use_precision`).
fn on<B: Backend, J: BackendJob>(
    device: B::Device,
    selection: &Selection,
    job: J,
    set: bool,
) -> J::Output {
    if set {
        use_precision::<B>(&device, selection.dtype);
    }
    job.run::<B>(device, selection)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_the_fastest_compiled() {
        let s = Selection::parse(None, None, None).unwrap();
        let kinds = compiled();
        if kinds[0] == BackendKind::Tch && !tch_has_cuda() && kinds.len() > 1 {
            assert_eq!(s.kind, kinds[1]);
        } else {
            assert_eq!(s.kind, kinds[0]);
        }
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn ndarray_takes_only_cpu() {
        let s = Selection::parse(Some("NdArray"), None, None).unwrap();
        assert_eq!((s.kind, s.device.as_str()), (BackendKind::Ndarray, "cpu"));
        let err = Selection::parse(Some("ndarray"), Some("cuda:0"), None).unwrap_err();
        assert!(err.to_string().contains("--device"), "{err}");
    }

    #[test]
    fn precisions_are_parsed_and_f32_is_the_default() {
        assert_eq!(Precision::parse(" BF16").unwrap(), Precision::Bf16);
        assert_eq!(Precision::parse("f16").unwrap(), Precision::F16);
        let s = Selection::parse(None, None, None).unwrap();
        assert_eq!(s.dtype, Precision::F32);
        let err = Selection::parse(None, None, Some("fp8")).unwrap_err();
        assert_eq!(err, BackendError::UnknownDtype("fp8".into()));
        assert!(err.to_string().contains("--dtype"), "{err}");
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn ndarray_refuses_half_precision() {
        let err = Selection::parse(Some("ndarray"), None, Some("bf16")).unwrap_err();
        assert!(
            matches!(
                err,
                BackendError::UnsupportedDtype {
                    dtype: Precision::Bf16,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err
            .to_string()
            .starts_with("--dtype bf16 is not supported by the ndarray"));
    }

    #[test]
    fn unknown_and_missing_backends_are_named() {
        let err = Selection::parse(Some("tpu"), None, None).unwrap_err();
        assert_eq!(err, BackendError::Unknown("tpu".into()));
        assert!(err.to_string().contains("--backend"));
        if let Some(missing) = BackendKind::ALL.into_iter().find(|k| !k.is_compiled()) {
            let err = Selection::parse(Some(missing.name()), None, None).unwrap_err();
            assert_eq!(err, BackendError::NotCompiled(missing));
            assert!(err.to_string().contains(&format!("--features {missing}")));
        }
    }

    #[test]
    fn device_strings_are_normalised() {
        assert_eq!(
            normalise_device(BackendKind::Cuda, Some("CUDA:1")).unwrap(),
            "cuda:1"
        );
        assert_eq!(
            normalise_device(BackendKind::Wgpu, Some("discrete:0")).unwrap(),
            "discrete:0"
        );
        assert!(normalise_device(BackendKind::Wgpu, Some("gpu")).is_err());
        assert!(normalise_device(BackendKind::Tch, Some("cuda:x")).is_err());
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_keeps_its_compiled_kernels() {
        use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};
        keep_compiled_kernels();
        let config = CubeClRuntimeConfig::get();
        let root = config.compilation.cache.as_ref().map(|c| c.root());
        // No cubecl.toml above the crate: the target directory beside its Cargo.toml.
        assert_eq!(
            root,
            Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        );
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn an_unwritable_directory_is_no_cache() {
        let dir = std::env::temp_dir().join(format!("attrib-ro-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(writable(&dir.join("made")));
        let file = dir.join("a-file");
        std::fs::write(&file, b"").unwrap();
        // A path under a regular file can be neither made nor written.
        assert!(!writable(&file.join("cache")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
