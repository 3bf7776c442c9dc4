//! Frame-exact time.
//!
//! Inside shotlist a moment of a film is a frame index (an integer counted from
//! the first frame, which is frame 0) at the film's frame rate, a rational
//! number taken from ffprobe such as `25/1` or `24000/1001`. Timecodes are made
//! only at the edges, by one rule:
//!
//! * `HH:MM:SS:FF` is non-drop and frame-count based at the *nominal* rate,
//!   the rate rounded to a whole number (24 for 23.976, 30 for 29.97). Frame
//!   `f` is written as `f / nominal` whole seconds and `f % nominal` frames.
//!   On a fractional rate the label therefore runs slower than the wall clock
//!   (at 23.976 it falls behind by 3.6 s an hour), exactly as a non-drop
//!   timecode on an editing system does.
//! * `HH:MM:SS;FF` (semicolon) is SMPTE drop-frame, which only exists for
//!   29.97 and 59.94; it stays within a frame of the wall clock.
//!
//! Every label made here parses back to the frame it was made from.

use std::fmt;
use std::str::FromStr;

/// Frame rates above this are treated as broken metadata, not as video.
const MAX_FPS: u64 = 1000;

/// What was wrong with a frame rate or a timecode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error(
        "invalid frame rate {0:?}: expected 1 to 1000 frames per second, \
         as a fraction such as 25/1 or 24000/1001"
    )]
    BadFps(String),
    #[error("invalid timecode {0:?}: expected HH:MM:SS:FF (or HH:MM:SS;FF for drop-frame)")]
    BadTimecode(String),
    #[error("timecode {timecode:?} does not exist at {fps} fps: {why}")]
    NoSuchFrame {
        timecode: String,
        fps: Fps,
        why: &'static str,
    },
    #[error("negative frame index {0}")]
    NegativeFrame(i64),
}

/// A frame rate as an exact fraction, kept in lowest terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fps {
    num: u32,
    den: u32,
}

impl Fps {
    /// Builds a rate from a fraction; errors unless the rate is between 1 and
    /// 1000 frames per second (a timecode needs at least one frame a second).
    pub fn new(num: u32, den: u32) -> Result<Fps, TimeError> {
        if num < den || den == 0 || u64::from(num) > MAX_FPS * u64::from(den) {
            return Err(TimeError::BadFps(format!("{num}/{den}")));
        }
        let g = gcd(num, den);
        Ok(Fps {
            num: num / g,
            den: den / g,
        })
    }

    pub fn num(self) -> u32 {
        self.num
    }

    pub fn den(self) -> u32 {
        self.den
    }

    /// The whole-number rate timecodes count in: 25 for 25, 24 for 23.976,
    /// 30 for 29.97 (the rate rounded half up).
    pub fn nominal(self) -> u32 {
        (self.num + self.den / 2) / self.den
    }

    /// The rate as a float, for display and rough arithmetic only.
    pub fn as_f64(self) -> f64 {
        f64::from(self.num) / f64::from(self.den)
    }

    /// The frame nearest to `seconds` after the first frame (half rounds up).
    ///
    /// The database computes chunk frames with the same expression
    /// (`floor(s * num / den + 0.5)`), so both sides agree to the frame.
    pub fn frame_at(self, seconds: f64) -> i64 {
        (seconds * f64::from(self.num) / f64::from(self.den) + 0.5).floor() as i64
    }

    /// The time of frame `frame` in seconds after the first frame.
    pub fn seconds_at(self, frame: i64) -> f64 {
        frame as f64 * f64::from(self.den) / f64::from(self.num)
    }

    /// Frames dropped from the count each minute by SMPTE drop-frame
    /// timecode, or `None` where the rate has no drop-frame form.
    pub fn drop_frames_per_minute(self) -> Option<u32> {
        match (self.num, self.den) {
            (30000, 1001) => Some(2),
            (60000, 1001) => Some(4),
            _ => None,
        }
    }
}

impl fmt::Display for Fps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.num, self.den)
    }
}

impl FromStr for Fps {
    type Err = TimeError;

    /// Parses `25/1`, `30000/1001` or a whole number such as `25`.
    fn from_str(s: &str) -> Result<Fps, TimeError> {
        let bad = || TimeError::BadFps(s.to_string());
        let (num, den) = match s.trim().split_once('/') {
            Some((n, d)) => (
                n.trim().parse().map_err(|_| bad())?,
                d.trim().parse().map_err(|_| bad())?,
            ),
            None => (s.trim().parse().map_err(|_| bad())?, 1),
        };
        Fps::new(num, den).map_err(|_| bad())
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Writes frame `frame` as a non-drop `HH:MM:SS:FF` timecode.
///
/// Hours are not wrapped at 24: a label past a day reads `24:00:00:00` and on.
///
/// # Panics
/// Never; a negative frame is written as frame 0 would be an error, so it is
/// clamped to 0 (callers only pass frames they have validated).
pub fn timecode(frame: i64, fps: Fps) -> String {
    let frame = frame.max(0);
    let nominal = i64::from(fps.nominal());
    fields_to_string(frame, nominal, ':')
}

/// Writes frame `frame` as SMPTE drop-frame `HH:MM:SS;FF`, or `None` when the
/// rate is not 29.97 or 59.94.
pub fn drop_frame_timecode(frame: i64, fps: Fps) -> Option<String> {
    let drop = i64::from(fps.drop_frames_per_minute()?);
    let nominal = i64::from(fps.nominal());
    let frame = frame.max(0);
    let per_minute = nominal * 60 - drop;
    let per_ten_minutes = nominal * 600 - drop * 9;
    let tens = frame / per_ten_minutes;
    let rest = frame % per_ten_minutes;
    let skipped = if rest < drop {
        0
    } else {
        (rest - drop) / per_minute
    };
    let label_count = frame + drop * 9 * tens + drop * skipped;
    Some(fields_to_string(label_count, nominal, ';'))
}

fn fields_to_string(count: i64, nominal: i64, last_separator: char) -> String {
    let ff = count % nominal;
    let total_seconds = count / nominal;
    let ss = total_seconds % 60;
    let mm = (total_seconds / 60) % 60;
    let hh = total_seconds / 3600;
    format!("{hh:02}:{mm:02}:{ss:02}{last_separator}{ff:02}")
}

/// Reads a timecode back into a frame index.
///
/// `HH:MM:SS:FF` is read as non-drop; `HH:MM:SS;FF` (or with `.` or `,`
/// before the frames) as drop-frame, which needs a 29.97 or 59.94 rate.
pub fn parse_timecode(label: &str, fps: Fps) -> Result<i64, TimeError> {
    let bad = || TimeError::BadTimecode(label.to_string());
    let (head, ff, drop_frame) = match label.rfind([':', ';', '.', ',']) {
        Some(i) => (
            &label[..i],
            &label[i + 1..],
            label[i..].starts_with([';', '.', ',']),
        ),
        None => return Err(bad()),
    };
    let mut parts = head.split(':');
    let (Some(hh), Some(mm), Some(ss), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let field = |s: &str| -> Result<i64, TimeError> {
        if s.is_empty() || s.len() > 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<i64>().map_err(|_| bad())
    };
    let (hh, mm, ss, ff) = (field(hh)?, field(mm)?, field(ss)?, field(ff)?);
    let nominal = i64::from(fps.nominal());
    let no_such = |why| TimeError::NoSuchFrame {
        timecode: label.to_string(),
        fps,
        why,
    };
    if mm >= 60 || ss >= 60 {
        return Err(no_such("minutes and seconds run from 00 to 59"));
    }
    if ff >= nominal {
        return Err(no_such("the frame field is not below the nominal rate"));
    }
    let count = ((hh * 60 + mm) * 60 + ss) * nominal + ff;
    if !drop_frame {
        return Ok(count);
    }
    let drop = i64::from(
        fps.drop_frames_per_minute()
            .ok_or_else(|| no_such("drop-frame needs 29.97 or 59.94"))?,
    );
    if ss == 0 && ff < drop && mm % 10 != 0 {
        return Err(no_such("drop-frame skips this label"));
    }
    let minutes = hh * 60 + mm;
    Ok(count - drop * (minutes - minutes / 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fps(s: &str) -> Fps {
        s.parse().unwrap()
    }

    #[test]
    fn rates_are_reduced_and_rounded_to_their_nominal() {
        assert_eq!(fps("50/2"), Fps::new(25, 1).unwrap());
        assert_eq!(fps("24000/1001").nominal(), 24);
        assert_eq!(fps("30000/1001").nominal(), 30);
        assert_eq!(fps("25").nominal(), 25);
        assert_eq!(fps("60000/1001").nominal(), 60);
    }

    #[test]
    fn broken_rates_are_refused() {
        for s in [
            "0/1", "25/0", "", "abc", "1/0", "90000/1", "-25/1", "25/1/2",
        ] {
            assert!(s.parse::<Fps>().is_err(), "{s} accepted");
        }
    }

    #[test]
    fn non_drop_labels_count_frames_at_the_nominal_rate() {
        assert_eq!(timecode(0, fps("25/1")), "00:00:00:00");
        assert_eq!(timecode(190, fps("25/1")), "00:00:07:15");
        assert_eq!(timecode(73_500, fps("25/1")), "00:49:00:00");
        assert_eq!(timecode(24, fps("24000/1001")), "00:00:01:00");
        assert_eq!(timecode(25 * 3600 * 100, fps("25/1")), "100:00:00:00");
    }

    #[test]
    fn drop_frame_skips_two_labels_each_minute_but_every_tenth() {
        let f = fps("30000/1001");
        assert_eq!(drop_frame_timecode(1799, f).unwrap(), "00:00:59;29");
        assert_eq!(drop_frame_timecode(1800, f).unwrap(), "00:01:00;02");
        assert_eq!(drop_frame_timecode(17_982, f).unwrap(), "00:10:00;00");
        assert_eq!(drop_frame_timecode(107_892, f).unwrap(), "01:00:00;00");
        assert!(drop_frame_timecode(10, fps("25/1")).is_none());
        assert!(parse_timecode("00:01:00;00", f).is_err());
    }

    #[test]
    fn every_label_parses_back_to_its_frame() {
        for rate in [
            "25/1",
            "24000/1001",
            "24/1",
            "30000/1001",
            "60000/1001",
            "50/1",
        ] {
            let f = fps(rate);
            for frame in (0..200_000).step_by(7).chain([1_000_000, 9_999_999]) {
                assert_eq!(
                    parse_timecode(&timecode(frame, f), f).unwrap(),
                    frame,
                    "{rate} {frame}"
                );
                if let Some(df) = drop_frame_timecode(frame, f) {
                    assert_eq!(parse_timecode(&df, f).unwrap(), frame, "{rate} {df}");
                }
            }
        }
    }

    #[test]
    fn malformed_labels_name_the_problem() {
        let f = fps("25/1");
        for s in [
            "",
            "00:00:00",
            "00:00:00:25",
            "00:60:00:00",
            "aa:00:00:00",
            "00:00:00:0x",
            "1:2:3:4:5",
        ] {
            assert!(parse_timecode(s, f).is_err(), "{s} accepted");
        }
        let err = parse_timecode("00:00:00:25", f).unwrap_err().to_string();
        assert!(
            err.contains("00:00:00:25") && err.contains("frame field"),
            "{err}"
        );
    }

    #[test]
    fn frame_at_rounds_to_the_nearest_frame() {
        let f = fps("24000/1001");
        assert_eq!(f.frame_at(165.0), 3956);
        assert_eq!(f.frame_at(f.seconds_at(123_456)), 123_456);
        assert_eq!(fps("25/1").frame_at(2940.0), 73_500);
    }
}
