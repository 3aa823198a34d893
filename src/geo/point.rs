//! Points on the Earth and great-circle distances.
//!
//! A point keeps its unit vector beside its latitude and longitude, so the
//! distance between two points is one dot product and one `acos`. The `acos`
//! is the polynomial of Abramowitz & Stegun 4.4.46 (absolute error below
//! 2e-8 rad, i.e. under 0.2 m on the Earth), which is several times cheaper
//! than the C library's and keeps relay ranking inside the routing budget.

/// Mean Earth radius in kilometres (IUGG).
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// A validated position: latitude in [-90, 90], longitude in [-180, 180].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoPoint {
    lat: f64,
    lon: f64,
    xyz: [f64; 3],
}

impl GeoPoint {
    /// 0°N 0°E; only a stand-in where a table has no entry.
    pub const NULL_ISLAND: GeoPoint = GeoPoint {
        lat: 0.0,
        lon: 0.0,
        xyz: [1.0, 0.0, 0.0],
    };

    /// A point from degrees; `None` when either value is out of range or not finite.
    pub fn new(latitude: f64, longitude: f64) -> Option<Self> {
        if !(-90.0..=90.0).contains(&latitude) || !(-180.0..=180.0).contains(&longitude) {
            return None;
        }
        let (lat, lon) = (latitude.to_radians(), longitude.to_radians());
        Some(GeoPoint {
            lat: latitude,
            lon: longitude,
            xyz: [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()],
        })
    }

    /// Latitude in degrees.
    pub fn latitude(&self) -> f64 {
        self.lat
    }

    /// Longitude in degrees.
    pub fn longitude(&self) -> f64 {
        self.lon
    }

    /// Great-circle distance in kilometres.
    #[inline]
    pub fn distance_km(&self, other: &GeoPoint) -> f64 {
        let [a, b, c] = self.xyz;
        let [x, y, z] = other.xyz;
        EARTH_RADIUS_KM * acos(a * x + b * y + c * z)
    }

    /// The normalised mean of `points` (their spherical centre). `None` for no
    /// points or when they cancel out (e.g. spread evenly around the globe).
    pub fn centre_of(points: impl IntoIterator<Item = GeoPoint>) -> Option<GeoPoint> {
        let mut sum = [0.0f64; 3];
        for p in points {
            for (s, v) in sum.iter_mut().zip(p.xyz) {
                *s += v;
            }
        }
        let norm = (sum[0] * sum[0] + sum[1] * sum[1] + sum[2] * sum[2]).sqrt();
        if norm < 1e-9 {
            return None;
        }
        let [x, y, z] = sum.map(|v| v / norm);
        GeoPoint::new(
            z.clamp(-1.0, 1.0).asin().to_degrees(),
            y.atan2(x).to_degrees(),
        )
    }
}

/// Many points stored as separate x, y, z columns, so that the distances from
/// one point to all of them are computed by a loop the compiler vectorises.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PointSet {
    x: Vec<f64>,
    y: Vec<f64>,
    z: Vec<f64>,
}

impl PointSet {
    pub fn push(&mut self, p: &GeoPoint) {
        self.x.push(p.xyz[0]);
        self.y.push(p.xyz[1]);
        self.z.push(p.xyz[2]);
    }

    pub fn len(&self) -> usize {
        self.x.len()
    }

    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }

    /// Replaces `out` with the great-circle distance in km from `from` to
    /// each point, in order. Allocates only if `out` must grow.
    pub fn distances_km(&self, from: &GeoPoint, out: &mut Vec<f64>) {
        let [a, b, c] = from.xyz;
        out.clear();
        out.resize(self.x.len(), 0.0);
        let points = self.x.iter().zip(&self.y).zip(&self.z);
        for (d, ((x, y), z)) in out.iter_mut().zip(points) {
            *d = EARTH_RADIUS_KM * acos(a * x + b * y + c * z);
        }
    }
}

impl FromIterator<GeoPoint> for PointSet {
    fn from_iter<I: IntoIterator<Item = GeoPoint>>(iter: I) -> Self {
        let mut set = PointSet::default();
        for p in iter {
            set.push(&p);
        }
        set
    }
}

/// `acos` for x in [-1, 1] (inputs outside are clamped: rounding in a dot
/// product of unit vectors can step just past 1).
#[inline]
fn acos(x: f64) -> f64 {
    let x = x.clamp(-1.0, 1.0);
    let ax = x.abs();
    // Abramowitz & Stegun 4.4.46: acos(x) = sqrt(1 - x) * P(x) for 0 <= x <= 1,
    // P of degree 7, evaluated by Estrin's scheme: half the dependent
    // multiply-add depth of Horner's, which matters when ranking relays is
    // bound by this chain's latency.
    let x2 = ax * ax;
    let x4 = x2 * x2;
    let p01 = 1.570_796_305_0 - 0.214_598_801_6 * ax;
    let p23 = 0.088_978_987_4 - 0.050_174_304_6 * ax;
    let p45 = 0.030_891_881_0 - 0.017_088_125_6 * ax;
    let p67 = 0.006_670_090_1 - 0.001_262_491_1 * ax;
    let p = (p01 + x2 * p23) + x4 * (p45 + x2 * p67);
    let r = (1.0 - ax).sqrt() * p;
    // Written as arithmetic rather than a branch, so loops over it vectorise.
    let negative = f64::from(u8::from(x < 0.0));
    r + negative * (std::f64::consts::PI - 2.0 * r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomial_acos_matches_libm() {
        let mut worst = 0.0f64;
        for i in -100_000..=100_000 {
            let x = f64::from(i) / 100_000.0;
            worst = worst.max((acos(x) - x.acos()).abs());
        }
        assert!(worst < 3e-8, "worst error {worst}");
    }

    fn haversine(a: (f64, f64), b: (f64, f64)) -> f64 {
        let (la1, lo1, la2, lo2) = (
            a.0.to_radians(),
            a.1.to_radians(),
            b.0.to_radians(),
            b.1.to_radians(),
        );
        let h = ((la2 - la1) / 2.0).sin().powi(2)
            + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * h.sqrt().asin()
    }

    #[test]
    fn agrees_with_haversine() {
        let cities = [
            (50.1109, 8.6821),
            (53.3498, -6.2603),
            (40.7128, -74.0060),
            (-33.8688, 151.2093),
            (64.1466, -21.9426),
            (47.3769, 8.5417),
        ];
        for a in cities {
            for b in cities {
                let (pa, pb) = (
                    GeoPoint::new(a.0, a.1).unwrap(),
                    GeoPoint::new(b.0, b.1).unwrap(),
                );
                let err = (pa.distance_km(&pb) - haversine(a, b)).abs();
                assert!(err < 0.01, "{a:?} -> {b:?} off by {err} km");
            }
        }
        let frankfurt = GeoPoint::new(50.1109, 8.6821).unwrap();
        let dublin = GeoPoint::new(53.3498, -6.2603).unwrap();
        assert!((1_000.0..1_200.0).contains(&frankfurt.distance_km(&dublin)));
        let antipode = GeoPoint::new(-50.1109, 8.6821 - 180.0).unwrap();
        let half = std::f64::consts::PI * EARTH_RADIUS_KM;
        assert!((frankfurt.distance_km(&antipode) - half).abs() < 1e-3);
    }

    #[test]
    fn point_set_distances_match_pairwise() {
        let points: Vec<GeoPoint> = [(50.1, 8.7), (53.3, -6.3), (-33.9, 151.2), (40.7, -74.0)]
            .iter()
            .map(|(la, lo)| GeoPoint::new(*la, *lo).unwrap())
            .collect();
        let set: PointSet = points.iter().copied().collect();
        let mut out = vec![123.0; 9];
        set.distances_km(&points[0], &mut out);
        assert_eq!(out.len(), 4);
        for (d, p) in out.iter().zip(&points) {
            assert_eq!(*d, points[0].distance_km(p));
        }
    }

    #[test]
    fn rejects_out_of_range() {
        assert!(GeoPoint::new(91.0, 0.0).is_none());
        assert!(GeoPoint::new(0.0, -180.5).is_none());
        assert!(GeoPoint::new(f64::NAN, 0.0).is_none());
    }

    #[test]
    fn centre_of_two_points_is_between_them() {
        let a = GeoPoint::new(0.0, 0.0).unwrap();
        let b = GeoPoint::new(0.0, 90.0).unwrap();
        let c = GeoPoint::centre_of([a, b]).unwrap();
        assert!(c.latitude().abs() < 1e-9 && (c.longitude() - 45.0).abs() < 1e-9);
        let opposite = GeoPoint::new(0.0, 180.0).unwrap();
        assert!(GeoPoint::centre_of([a, opposite]).is_none());
        assert!(GeoPoint::centre_of([]).is_none());
    }
}
