//! An evaluation set described as the official files describe it: a list file
//! (`name num_frames label valence`, as `relative_test3_NCEV.txt`), a folder of videos,
//! optional folders of pre-extracted features per modality (`<name>.npy`), and an optional
//! transcript CSV (`name,sentence`, as `transcription_en_all.csv`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{EvalError, EvalSettings};
use emollama_runtime::features::FeatureFiles;
use emollama_runtime::prompt::split_labels;

/// One line of the list file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clip {
    pub name: String,
    pub frames: u32,
    pub label: String,
    pub valence: Option<f64>,
}

/// Where a dataset's files are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DatasetPaths {
    pub list: PathBuf,
    pub videos: PathBuf,
    /// `mae_340_UTT`: MAE features of the faces.
    pub local_features: Option<PathBuf>,
    /// `maeV_399_UTT`: VideoMAE features of the faces.
    pub temporal_features: Option<PathBuf>,
    /// `HL-UTT`: HuBERT features of the audio.
    pub audio_features: Option<PathBuf>,
    pub transcripts: Option<PathBuf>,
}

/// A dataset read and checked: its clips (in list order) and transcripts.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub paths: DatasetPaths,
    pub clips: Vec<Clip>,
    pub transcripts: BTreeMap<String, String>,
}

impl Dataset {
    /// Read the list (labels checked against the settings' labels) and the transcripts;
    /// `limit` keeps the first clips. Done before any model loads, so a wrong list fails
    /// in a moment.
    pub fn open(paths: DatasetPaths, settings: &EvalSettings, limit: Option<usize>) -> Result<Self, EvalError> {
        let mut clips = read_list(&paths.list, settings.labels(), settings.multi_label())?;
        if let Some(n) = limit {
            clips.truncate(n);
        }
        let transcripts = match &paths.transcripts {
            Some(p) => read_transcripts(p)?,
            None => BTreeMap::new(),
        };
        Ok(Dataset { paths, clips, transcripts })
    }
}

/// The video containers looked for, in this order, as `<videos>/<name>.<ext>`.
pub const VIDEO_EXTENSIONS: [&str; 6] = ["mp4", "avi", "mkv", "mov", "webm", "flv"];

/// The list file's clips. A malformed line, a duplicate name or a label outside `labels`
/// is an error naming the line: a wrong list must not become a wrong metric. `multi`: a
/// label is one or more labels separated by `,` or `;` (kept as `a,b`).
pub fn read_list(path: &Path, labels: &[&str], multi: bool) -> Result<Vec<Clip>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io { path: path.into(), source })?;
    // A UTF-8 byte-order mark (Windows editors write one) is not part of the first name.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut clips: Vec<Clip> = Vec::new();
    let mut seen = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let bad = |reason: String| EvalError::ListLine { path: path.into(), line: line_no, reason };
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() || fields[0].starts_with('#') {
            continue;
        }
        if !(3..=4).contains(&fields.len()) {
            return Err(bad(format!("{} fields; expected `name num_frames label [valence]`", fields.len())));
        }
        // A name is a file name inside --videos and the feature folders, nothing more.
        let name = fields[0];
        let plain =
            matches!(Path::new(name).components().collect::<Vec<_>>().as_slice(), [std::path::Component::Normal(_)]);
        if !plain || name.contains('\\') {
            return Err(bad(format!("the name {name:?} is not a plain file name (it would be read outside --videos)")));
        }
        let frames = fields[1].parse().map_err(|_| bad(format!("num_frames {:?} is not a count", fields[1])))?;
        let mut label = fields[2].to_lowercase();
        let each = if multi { split_labels(&label) } else { vec![label.as_str()] };
        if each.is_empty() || each.iter().any(|l| !labels.contains(l)) {
            return Err(bad(format!("unknown label {:?}; the scoring labels are {}", fields[2], labels.join(", "))));
        }
        if multi {
            label = each.join(",");
        }
        let valence = match fields.get(3) {
            Some(v) => Some(v.parse().map_err(|_| bad(format!("valence {v:?} is not a number")))?),
            None => None,
        };
        if let Some(first) = seen.insert(fields[0].to_string(), line_no) {
            return Err(bad(format!("{} is listed again (first on line {first})", fields[0])));
        }
        clips.push(Clip { name: fields[0].to_string(), frames, label, valence });
    }
    if clips.is_empty() {
        return Err(EvalError::ListLine { path: path.into(), line: 0, reason: "no clips in the list".into() });
    }
    Ok(clips)
}

/// `name → sentence` from a transcript CSV with a header naming `name` and one of
/// `sentence`, `sentence_en` (MER2024) or `english`.
pub fn read_transcripts(path: &Path) -> Result<BTreeMap<String, String>, EvalError> {
    let bad = |reason: String| EvalError::Transcripts { path: path.into(), reason };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    // A UTF-8 byte-order mark is not part of the first column's name.
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf".as_slice()).unwrap_or(&bytes);
    // Not flexible: a row with a field more or less (an unclosed quote swallows the rows
    // after it into one field) is an error naming the row.
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(bytes);
    let headers = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
    let column = |names: &[&str]| headers.iter().position(|h| names.contains(&h.trim().to_lowercase().as_str()));
    let name_col = column(&["name", "names"]).ok_or_else(|| bad("no `name` column in the header".into()))?;
    let text_col = column(&["sentence", "sentence_en", "english"])
        .ok_or_else(|| bad("no `sentence` (or `sentence_en`, `english`) column in the header".into()))?;
    let mut out = BTreeMap::new();
    let mut rows = BTreeMap::new();
    for record in reader.records() {
        let record = record.map_err(|e| bad(e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line());
        let (name, text) = (record.get(name_col).unwrap_or("").trim(), record.get(text_col).unwrap_or("").trim());
        // A transcript is one line of speech: a line break inside a field is an
        // unclosed quote that ran on into the next rows.
        if text.contains(['\n', '\r']) || name.contains(['\n', '\r']) {
            return Err(bad(format!("row {line}: a field runs over several lines (an unclosed quote?)")));
        }
        if let Some(first) = rows.insert(name.to_string(), line) {
            return Err(bad(format!("row {line}: {name} has a transcript already (row {first})")));
        }
        out.insert(name.to_string(), text.to_string());
    }
    Ok(out)
}

impl DatasetPaths {
    /// The clip's video, `<videos>/<name>.<ext>` for the first extension that exists.
    pub fn video(&self, name: &str) -> Result<PathBuf, String> {
        VIDEO_EXTENSIONS
            .iter()
            .map(|ext| self.videos.join(format!("{name}.{ext}")))
            .find(|p| p.is_file())
            .ok_or_else(|| format!("no video {name}.{{{}}} in {}", VIDEO_EXTENSIONS.join(","), self.videos.display()))
    }

    /// The clip's features files: `<folder>/<name>.npy` for each folder given (missing
    /// files are the clip's error, not a silent fallback to the encoder).
    pub fn features(&self, name: &str) -> Result<FeatureFiles, String> {
        let file = |dir: &Option<PathBuf>| -> Result<Option<PathBuf>, String> {
            let Some(dir) = dir else { return Ok(None) };
            let p = dir.join(format!("{name}.npy"));
            match std::fs::metadata(&p) {
                Ok(m) if m.is_file() => Ok(Some(p)),
                Ok(m) => Err(format!(
                    "features file {} is {}, not a regular file",
                    p.display(),
                    emollama_bundle::files::describe_kind(&m)
                )),
                Err(_) => Err(format!("no features file {}", p.display())),
            }
        };
        Ok(FeatureFiles {
            local: file(&self.local_features)?,
            temporal: file(&self.temporal_features)?,
            audio: file(&self.audio_features)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emollama_runtime::prompt::LABELS_6;

    fn list(text: &str) -> Result<Vec<Clip>, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("list.txt");
        std::fs::write(&p, text).unwrap();
        read_list(&p, &LABELS_6, false).map_err(|e| e.to_string())
    }

    #[test]
    fn list_lines_as_the_official_file_and_refusals_naming_the_line() {
        let clips = list("samplenew_00006611 125 sad -10\nsample_00000002 80 Happy\n\n").unwrap();
        assert_eq!(
            clips[0],
            Clip { name: "samplenew_00006611".into(), frames: 125, label: "sad".into(), valence: Some(-10.0) }
        );
        assert_eq!(clips[1].label, "happy");
        assert!(list("a 10 sad\nb ten sad\n").unwrap_err().contains("line 2: num_frames \"ten\""));
        assert!(list("a 10 sad\nb 10\n").unwrap_err().contains("line 2: 2 fields"));
        assert!(list("a 10 fear\n").unwrap_err().contains("unknown label \"fear\""));
        assert!(list("a 10 sad\na 12 sad\n").unwrap_err().contains("listed again (first on line 1)"));
        assert!(list("\n").unwrap_err().contains("no clips"));
    }

    #[test]
    fn transcripts_with_quoted_commas_and_the_mer2024_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        std::fs::write(&p, "name,chinese,sentence_en\na,x,\"Well, fine.\"\nb,y,No\n").unwrap();
        let t = read_transcripts(&p).unwrap();
        assert_eq!(t["a"], "Well, fine.");
        assert_eq!(t["b"], "No");
        std::fs::write(&p, "id,text\n").unwrap();
        assert!(read_transcripts(&p).unwrap_err().to_string().contains("no `name` column"));
    }
}
