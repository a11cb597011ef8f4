//! Locations and distances for warehouse choice.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GeoPoint {
    pub lat: f64,
    pub lon: f64,
}

impl GeoPoint {
    /// `None` unless latitude is within ±90 and longitude within ±180.
    pub fn new(lat: f64, lon: f64) -> Option<GeoPoint> {
        ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon))
            .then_some(GeoPoint { lat, lon })
    }

    /// Great-circle distance in kilometres (haversine; plenty for choosing a warehouse).
    pub fn distance_km(self, other: GeoPoint) -> f64 {
        const EARTH_RADIUS_KM: f64 = 6371.0;
        let (la1, la2) = (self.lat.to_radians(), other.lat.to_radians());
        let dlat = la2 - la1;
        let dlon = (other.lon - self.lon).to_radians();
        let a = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlon / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * a.sqrt().asin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Distances are symmetric and roughly right (Berlin-Munich ~ 504 km).
    #[test]
    fn distance_is_plausible() {
        let berlin = GeoPoint::new(52.52, 13.405).unwrap();
        let munich = GeoPoint::new(48.137, 11.575).unwrap();
        let d = berlin.distance_km(munich);
        assert!((500.0..510.0).contains(&d), "{d}");
        assert!((d - munich.distance_km(berlin)).abs() < 1e-9);
        assert!(GeoPoint::new(91.0, 0.0).is_none());
    }
}
