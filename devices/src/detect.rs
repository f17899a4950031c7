//! What board and software this is, read from files under a root folder (`/` on a
//! device; a folder of recorded files in tests). Formats: `/proc/device-tree/model`
//! (NUL-terminated), `/proc/meminfo`, `/etc/nv_tegra_release`, nvpmodel's
//! `/var/lib/nvpmodel/status` + `/etc/nvpmodel.conf`, cpufreq and devfreq in `/sys`,
//! CUDA's `version.json`, TensorRT's `NvInferVersion.h`.

use std::path::Path;

use serde::Serialize;

use crate::profile::Profile;

#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    pub arch: String,
    pub model: Option<String>,
    pub mem_total_gb: Option<f64>,
    /// L4T release, e.g. `36.4.3`.
    pub l4t: Option<String>,
    pub jetpack: Option<String>,
    pub power_mode: Option<String>,
    pub power_mode_id: Option<u32>,
    pub cpu_cores: usize,
    pub cpu_max_mhz: Option<u32>,
    pub gpu_max_mhz: Option<u32>,
    pub cuda: Option<String>,
    pub tensorrt: Option<String>,
    pub nvidia_gpu: bool,
    pub cpu_features: Vec<String>,
    /// The matching profile's name.
    pub profile: Option<String>,
    /// Each problem with its fix.
    pub problems: Vec<String>,
}

impl HostInfo {
    pub fn is_jetson(&self) -> bool {
        self.l4t.is_some() || self.model.as_deref().is_some_and(|m| m.contains("Jetson"))
    }
}

fn read(root: &Path, rel: &str) -> Option<String> {
    std::fs::read(root.join(rel.trim_start_matches('/'))).ok().map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// `# R36 (release), REVISION: 4.3, ...` → `36.4.3`.
fn parse_l4t(text: &str) -> Option<String> {
    let major = text.split("# R").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.to_string();
    let rev = text.split("REVISION:").nth(1)?.split(',').next()?.trim().to_string();
    Some(format!("{major}.{rev}"))
}

/// The JetPack release that ships an L4T release.
pub fn jetpack_for_l4t(l4t: &str) -> Option<&'static str> {
    let table = [
        ("38.2", "7.0"),
        ("36.4.4", "6.2.1"),
        ("36.4.3", "6.2"),
        ("36.4.0", "6.1"),
        ("36.4", "6.1"),
        ("36.3", "6.0"),
        ("36.2", "6.0 DP"),
        ("35.6", "5.1.4"),
        ("35.5", "5.1.3"),
        ("35.4.1", "5.1.2"),
        ("35.3.1", "5.1.1"),
    ];
    table.iter().find(|(prefix, _)| l4t == *prefix || l4t.starts_with(&format!("{prefix}."))).map(|(_, jp)| *jp)
}

/// nvpmodel's current mode: id from `/var/lib/nvpmodel/status` (`pmode:0002 ...`),
/// name from `/etc/nvpmodel.conf` (`< POWER_MODEL ID=2 NAME=15W >`).
fn power_mode(root: &Path) -> (Option<u32>, Option<String>) {
    let id = read(root, "/var/lib/nvpmodel/status")
        .and_then(|s| s.split("pmode:").nth(1).map(|v| v.chars().take_while(char::is_ascii_digit).collect::<String>()))
        .and_then(|v| v.parse::<u32>().ok());
    let name = id.and_then(|id| {
        read(root, "/etc/nvpmodel.conf")?.lines().find_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("< POWER_MODEL")?;
            let mid: u32 = rest.split("ID=").nth(1)?.split_whitespace().next()?.parse().ok()?;
            (mid == id).then(|| rest.split("NAME=").nth(1).map(|n| n.trim_end_matches('>').trim().to_string()))?
        })
    });
    (id, name)
}

fn number_after(text: &str, key: &str) -> Option<String> {
    let rest = text.split(key).nth(1)?;
    let v: String =
        rest.chars().skip_while(|c| !c.is_ascii_digit()).take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    (!v.is_empty()).then_some(v)
}

fn tensorrt_version(root: &Path) -> Option<String> {
    for dir in ["/usr/include/aarch64-linux-gnu", "/usr/include/x86_64-linux-gnu", "/usr/include"] {
        if let Some(h) = read(root, &format!("{dir}/NvInferVersion.h")) {
            let get = |k: &str| {
                number_after(&h, &format!("#define {k} ")).or_else(|| number_after(&h, &format!("#define TRT_{k} ")))
            };
            if let (Some(a), Some(b), Some(c)) =
                (get("NV_TENSORRT_MAJOR"), get("NV_TENSORRT_MINOR"), get("NV_TENSORRT_PATCH"))
            {
                return Some(format!("{a}.{b}.{c}"));
            }
        }
    }
    None
}

fn gpu_max_mhz(root: &Path) -> Option<u32> {
    let dir = root.join("sys/class/devfreq");
    let entries = std::fs::read_dir(dir).ok()?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if ["gpu", "ga10b", "gv11b", "gb10b"].iter().any(|k| name.contains(k)) {
            let hz: u64 = std::fs::read_to_string(e.path().join("max_freq")).ok()?.trim().parse().ok()?;
            return Some((hz / 1_000_000) as u32);
        }
    }
    None
}

/// Read everything about the host under `root` and match a profile.
pub fn detect(root: &Path, profiles: &[Profile]) -> HostInfo {
    let model = read(root, "/proc/device-tree/model")
        .map(|m| m.trim_end_matches('\0').trim().to_string())
        .filter(|m| !m.is_empty());
    let mem_total_gb = read(root, "/proc/meminfo")
        .and_then(|m| number_after(&m, "MemTotal:"))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb * 1024.0 / 1e9);
    let l4t = read(root, "/etc/nv_tegra_release").and_then(|t| parse_l4t(&t));
    let jetpack = l4t.as_deref().and_then(jetpack_for_l4t).map(String::from);
    let (power_mode_id, power_mode) = power_mode(root);
    let cpuinfo = read(root, "/proc/cpuinfo").unwrap_or_default();
    let cpu_cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let flags_line = cpuinfo.lines().find(|l| l.starts_with("flags") || l.starts_with("Features")).unwrap_or("");
    let wanted =
        ["avx2", "avx512f", "avx512_vnni", "amx_tile", "fma", "f16c", "asimd", "asimdhp", "asimddp", "sve", "i8mm"];
    let cpu_features = flags_line.split_whitespace().filter(|f| wanted.contains(f)).map(String::from).collect();
    let cpu_max_mhz = read(root, "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
        .and_then(|k| k.trim().parse::<u64>().ok())
        .map(|k| (k / 1000) as u32);
    let cuda = read(root, "/usr/local/cuda/version.json").and_then(|v| {
        let rest = v.split("\"cuda\"").nth(1)?;
        number_after(rest, "\"version\"")
    });
    let nvidia_gpu =
        root.join("dev/nvidia0").exists() || root.join("proc/driver/nvidia/version").exists() || l4t.is_some();
    let mut info = HostInfo {
        arch: std::env::consts::ARCH.to_string(),
        model,
        mem_total_gb,
        l4t,
        jetpack,
        power_mode,
        power_mode_id,
        cpu_cores,
        cpu_max_mhz,
        gpu_max_mhz: gpu_max_mhz(root),
        cuda,
        tensorrt: tensorrt_version(root),
        nvidia_gpu,
        cpu_features,
        profile: None,
        problems: Vec::new(),
    };
    info.profile = match_profile(&info, profiles).map(|p| p.name.clone());
    info.problems = problems(&info, profiles);
    info
}

fn match_profile<'a>(info: &HostInfo, profiles: &'a [Profile]) -> Option<&'a Profile> {
    if let Some(model) = &info.model {
        let mem = info.mem_total_gb.unwrap_or(0.0);
        let mut candidates: Vec<&Profile> = profiles
            .iter()
            .filter(|p| p.model_match.iter().any(|m| model.contains(m.as_str())))
            .filter(|p| mem >= p.sku_memory_gb[0] && mem <= p.sku_memory_gb[1])
            .collect();
        // The Orin Nano Super is the same board in the MAXN_SUPER power mode.
        if candidates.len() > 1 {
            let super_mode = info.power_mode.as_deref() == Some("MAXN_SUPER");
            candidates.retain(|p| p.name.ends_with("-super") == super_mode);
        }
        if let Some(p) = candidates.first() {
            return Some(p);
        }
        if info.is_jetson() {
            return None;
        }
    }
    let name = if info.nvidia_gpu { "x86-cuda" } else { "x86-cpu" };
    profiles.iter().find(|p| p.name == name)
}

fn problems(info: &HostInfo, profiles: &[Profile]) -> Vec<String> {
    let mut out = Vec::new();
    let profile = info.profile.as_deref().and_then(|n| profiles.iter().find(|p| p.name == n));
    match profile {
        None => out.push(format!(
            "unrecognised board {:?} with {:.1} GB: pass --profile NAME (see `emollama profiles`) or add a profile file",
            info.model.as_deref().unwrap_or("?"),
            info.mem_total_gb.unwrap_or(0.0)
        )),
        Some(p) if info.is_jetson() && !p.max_power_mode.is_empty()
            && info.power_mode.as_deref() != Some(p.max_power_mode.as_str()) => {
                out.push(format!(
                    "power mode is {}, not {}: decode runs below the board's bandwidth; fix: `sudo nvpmodel -m <id of {}>` (see /etc/nvpmodel.conf) and `sudo jetson_clocks` (again after every boot)",
                    info.power_mode.as_deref().unwrap_or("unknown"),
                    p.max_power_mode,
                    p.max_power_mode
                ));
            }
        _ => {}
    }
    if info.is_jetson() && info.tensorrt.is_none() {
        out.push("TensorRT headers/libraries not found: install JetPack's TensorRT (`sudo apt install nvidia-tensorrt`) for the TensorRT provider".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l4t_and_jetpack() {
        let t = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025";
        assert_eq!(parse_l4t(t).as_deref(), Some("36.4.3"));
        assert_eq!(jetpack_for_l4t("36.4.3"), Some("6.2"));
        assert_eq!(jetpack_for_l4t("35.4.1"), Some("5.1.2"));
        assert_eq!(jetpack_for_l4t("36.3.0"), Some("6.0"));
        assert_eq!(jetpack_for_l4t("12.0"), None);
    }
}
