//! The sequential colour scale of node scores: ColorBrewer's YlOrRd, pale yellow (low) to dark
//! red (high). Its lowest colour is not white, so a zero-score box still shows on white.

/// The scale's colours, evenly spaced from 0 to 1.
pub(crate) const STOPS: [[u8; 3]; 9] = [
    [0xff, 0xff, 0xcc],
    [0xff, 0xed, 0xa0],
    [0xfe, 0xd9, 0x76],
    [0xfe, 0xb2, 0x4c],
    [0xfd, 0x8d, 0x3c],
    [0xfc, 0x4e, 0x2a],
    [0xe3, 0x1a, 0x1c],
    [0xbd, 0x00, 0x26],
    [0x80, 0x00, 0x26],
];

/// The colour at `t` in `[0, 1]` (clamped; NaN reads as 0), interpolated linearly in sRGB.
pub(crate) fn ramp(t: f64) -> [u8; 3] {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let pos = t * (STOPS.len() - 1) as f64;
    let i = (pos.floor() as usize).min(STOPS.len() - 2);
    let f = pos - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    std::array::from_fn(|k| (a[k] as f64 + (b[k] as f64 - a[k] as f64) * f).round() as u8)
}

/// `#rrggbb`.
pub(crate) fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// Whether white text reads better than black on this fill (relative luminance below 0.35).
pub(crate) fn is_dark(c: [u8; 3]) -> bool {
    let lin = |v: u8| {
        let v = v as f64 / 255.0;
        if v <= 0.04045 {
            v / 12.92
        } else {
            ((v + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2]) < 0.35
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_hits_its_ends_and_clamps() {
        assert_eq!(ramp(0.0), STOPS[0]);
        assert_eq!(ramp(1.0), STOPS[8]);
        assert_eq!(ramp(-3.0), STOPS[0]);
        assert_eq!(ramp(7.0), STOPS[8]);
        assert_eq!(ramp(f64::NAN), STOPS[0]);
        assert_eq!(hex(ramp(0.5)), "#fd8d3c");
        assert!(is_dark(STOPS[8]) && !is_dark(STOPS[0]));
    }
}
