//! The SEKOIA.IO regions and their intake base URLs: the one table of them.
//!
//! Source: SEKOIA.IO's public documentation, its "regions" page and the HTTPS intake's
//! "formatting options" page (collected in ../shared/SEKOIA-INTAKE.md): FRA1 and SGP1 have
//! no path prefix, the others take `/api/v1/intake-http`. `/plain/batch` is appended to
//! the base. Any other intake is set with `intake_url`.

/// Region name (lower case) → base URL of its intake.
pub const REGIONS: &[(&str, &str)] = &[
    ("fra1", "https://intake.sekoia.io"),
    ("fra2", "https://intake.fra2.sekoia.io/api/v1/intake-http"),
    ("mco1", "https://intake.mco1.sekoia.io/api/v1/intake-http"),
    ("sgp1", "https://intake.sgp1.sekoia.io"),
    ("uae1", "https://intake.uae1.sekoia.io/api/v1/intake-http"),
    ("usa1", "https://intake.usa1.sekoia.io/api/v1/intake-http"),
];

/// The region whose intake is used when neither `region` nor `intake_url` is given.
pub const DEFAULT_REGION: &str = "fra1";

/// The base URL of `region` (any case); `None` if it is not one.
pub fn region_url(region: &str) -> Option<&'static str> {
    REGIONS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(region))
        .map(|(_, url)| *url)
}

/// The region names for messages: "fra1, fra2, …, uae1 or usa1".
pub fn region_names() -> String {
    let names: Vec<&str> = REGIONS.iter().map(|(name, _)| *name).collect();
    match names.split_last() {
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions() {
        assert_eq!(region_url("FRA1"), Some("https://intake.sekoia.io"));
        assert_eq!(region_url("sgp1"), Some("https://intake.sgp1.sekoia.io"));
        assert_eq!(
            region_url("usa1"),
            Some("https://intake.usa1.sekoia.io/api/v1/intake-http")
        );
        assert_eq!(region_url("mars1"), None);
        assert_eq!(region_url(DEFAULT_REGION), Some("https://intake.sekoia.io"));
        assert_eq!(region_names(), "fra1, fra2, mco1, sgp1, uae1 or usa1");
    }
}
