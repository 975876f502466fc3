//! Where and how far: a client's position ([`Location`], checked exactly on its decimal
//! digits and kept as text for the byte-exact copy), the same in floating degrees for the
//! places API ([`Degrees`]), and a WHATSAT radius ([`Radius`]).

use super::scan::Decimal;

/// The largest WHATSAT radius, in kilometres.
const MAX_RADIUS_KM: u64 = 50;

/// A position in ISO 6709 decimal degrees, `+34.068930-118.445127`.
///
/// The text is kept for the byte-exact copy in AT lines, and checked exactly on its decimal
/// digits; the degrees are floats, read from the text only when a search needs them (an
/// IAMAT never does), because they only ever go to the places API.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Location<'a> {
    /// The field as the client sent it.
    pub text: &'a str,
    /// Where the longitude starts in `text`.
    split: usize,
}

impl<'a> Location<'a> {
    /// Parses `±DD[.D*]±DDD[.D*]`: each coordinate with its sign, latitude then longitude,
    /// within [-90, 90] and [-180, 180].
    pub fn parse(text: &'a str) -> Option<Self> {
        let signs = ['+', '-'];
        let (lat, rest) = Decimal::prefix(text.strip_prefix(signs)?)?;
        let split = text.len() - rest.len();
        let (lng, tail) = Decimal::prefix(rest.strip_prefix(signs)?)?;
        (tail.is_empty() && at_most(&lat, 90) && at_most(&lng, 180))
            .then_some(Location { text, split })
    }

    /// The position in degrees, owning nothing (for records that outlive the line).
    pub fn degrees(&self) -> Option<Degrees> {
        let (lat, lng) = self.text.split_at(self.split);
        Some(Degrees {
            latitude: lat.parse().ok()?,
            longitude: lng.parse().ok()?,
        })
    }
}

/// Whether a coordinate's digits are within `limit` degrees, checked exactly.
fn at_most(degrees: &Decimal<'_>, limit: u64) -> bool {
    degrees.cmp_int(limit) != std::cmp::Ordering::Greater
}

/// A position that owns its numbers, for messages and stored records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Degrees {
    /// Latitude in degrees.
    pub latitude: f64,
    /// Longitude in degrees.
    pub longitude: f64,
}

/// A WHATSAT radius: greater than 0 and at most 50 km, fraction allowed.
#[derive(Debug, Clone, PartialEq)]
pub struct Radius {
    /// The radius in metres as exact decimal text (km x 1000), for the places API's URL.
    metres: String,
}

impl Radius {
    /// Parses `digits[.digits]` kilometres within (0, 50].
    pub fn parse(text: &str) -> Option<Radius> {
        let d = Decimal::parse(text)?;
        if d.cmp_int(0).is_le() || d.cmp_int(MAX_RADIUS_KM).is_gt() {
            return None;
        }
        // Move the decimal point three places right, then drop what is not significant.
        let frac = format!("{:0<3}", d.frac);
        let (whole, rest) = frac.split_at(3);
        let int = format!("{}{whole}", d.int);
        let int = int.trim_start_matches('0');
        let rest = rest.trim_end_matches('0');
        let int = if int.is_empty() { "0" } else { int };
        let metres = if rest.is_empty() {
            int.to_owned()
        } else {
            format!("{int}.{rest}")
        };
        Some(Radius { metres })
    }

    /// The radius in metres, exact decimal text (`10` km is `10000`, `0.0125` km is `12.5`).
    pub fn metres(&self) -> &str {
        &self.metres
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radius_in_metres_is_exact() {
        let table = [
            ("10", "10000"),
            ("10.5", "10500"),
            ("0.0125", "12.5"),
            ("0.001", "1"),
            ("050", "50000"),
            ("1.23456789", "1234.56789"),
            ("0.0000001", "0.0001"),
        ];
        for (km, m) in table {
            assert_eq!(Radius::parse(km).unwrap().metres(), m, "{km}");
        }
    }
}
