//! Every kind of policy-file mistake yields a clear problem naming the file,
//! the field and what to do; all problems are reported at once.

use std::path::{Path, PathBuf};

use residency_relay::policy::{self, ConfigProblem};

const BASE: &str = r#"
default_jurisdiction = "eu"

[geoip]
trusted_proxies = ["10.0.0.0/8"]

[[geoip.override]]
cidr = "127.0.0.2/32"
country = "DE"

[[relay]]
id = "de-fra-1"
country = "DE"
latitude = 50.11
longitude = 8.68
quic_addr = "127.0.1.1:4433"
max_participants = 10
max_bitrate_bps = 1000

[[relay]]
id = "us-nyc-1"
country = "US"
latitude = 40.71
longitude = -74.0
quic_addr = "127.0.1.2:4433"
max_participants = 10
max_bitrate_bps = 1000

[[plan]]
id = "free"

[[plan]]
id = "paid"
jurisdictions = ["eu", "us"]

[[tenant]]
id = "acme"
plan = "paid"
api_key_sha256 = "62c2fc277ab4261d4243be7b5cf49bdab2c39fed01ae2d4ce1cf9a38ec4e793c"
"#;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("regions")).unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        let f = Fixture { dir };
        f.region("eu", "id = \"eu\"\nname = \"EU\"\nlegal_basis = \"GDPR\"\ncountries = [\"DE\", \"FR\", \"IE\"]\n");
        f.region(
            "us",
            "id = \"us\"\nname = \"US\"\nlegal_basis = \"US law\"\ncountries = [\"US\"]\n",
        );
        f.config(BASE);
        f
    }

    fn region(&self, file_stem: &str, text: &str) {
        std::fs::write(self.path(&format!("regions/{file_stem}.toml")), text).unwrap();
    }

    fn config(&self, text: &str) {
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// `rel` inside the fixture, resolved as the loader resolves paths.
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().canonicalize().unwrap().join(rel)
    }

    fn config_path(&self) -> PathBuf {
        self.path("config/c.toml")
    }

    /// Replaces `from` (which must occur) in the base config.
    fn edit(&self, from: &str, to: &str) {
        assert!(BASE.contains(from), "fixture text not found: {from}");
        self.config(&BASE.replacen(from, to, 1));
    }

    fn problems(&self) -> Vec<ConfigProblem> {
        match policy::load(&self.config_path()) {
            Ok(_) => panic!("config was accepted"),
            Err(e) => {
                // The rendered error lists each problem on its own line.
                let text = e.to_string();
                for p in &e.problems {
                    assert!(text.contains(&p.message));
                }
                e.problems
            }
        }
    }
}

/// Asserts one problem in `file` (relative to the fixture) whose field and
/// message contain the given fragments.
fn assert_problem(f: &Fixture, problems: &[ConfigProblem], file: &str, field: &str, message: &str) {
    let file = f.path(file);
    assert!(
        problems
            .iter()
            .any(|p| p.file == file && p.field.contains(field) && p.message.contains(message)),
        "no problem in {} at '{field}' saying '{message}'; got:\n{problems:#?}",
        file.display()
    );
}

#[test]
fn base_fixture_is_valid() {
    let f = Fixture::new();
    let policy = policy::load(&f.config_path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(policy.relays().len(), 2);
    assert_eq!(policy.jurisdictions().len(), 2);
}

#[test]
fn config_syntax_error_names_the_file_and_line() {
    let f = Fixture::new();
    f.config("default_jurisdiction = \"eu\n");
    let p = f.problems();
    assert_eq!(p.len(), 1);
    assert_problem(&f, &p, "config/c.toml", "", "not valid config TOML");
    assert!(p[0].message.contains("line 1"), "{}", p[0].message);
}

#[test]
fn unknown_config_field_is_an_error() {
    let f = Fixture::new();
    f.edit(
        "max_participants = 10\nmax_bitrate_bps = 1000\n\n[[relay]]",
        "max_participants = 10\nmax_bitrate_bps = 1000\ncapacity = 5\n\n[[relay]]",
    );
    let p = f.problems();
    assert_problem(&f, &p, "config/c.toml", "", "unknown field `capacity`");
}

#[test]
fn missing_config_file() {
    let f = Fixture::new();
    let err = policy::load(&f.path("config/absent.toml")).unwrap_err();
    assert!(
        err.problems[0]
            .message
            .contains("cannot read the config file")
    );
}

#[test]
fn unknown_region_field_and_syntax() {
    let f = Fixture::new();
    f.region(
        "ca",
        "id = \"ca\"\nname = \"Canada\"\nlegal_basis = \"PIPEDA\"\ncountry = [\"CA\"]\n",
    );
    f.region("ch", "id = \"ch\"\nname = ");
    let p = f.problems();
    assert_problem(&f, &p, "regions/ca.toml", "", "unknown field `country`");
    assert_problem(&f, &p, "regions/ch.toml", "", "not a valid region file");
}

#[test]
fn unknown_and_duplicate_country_codes() {
    let f = Fixture::new();
    f.region("uk", "id = \"uk\"\nname = \"UK\"\nlegal_basis = \"UK GDPR\"\ncountries = [\"UK\", \"GB\", \"GB\", \"XX\"]\n");
    let p = f.problems();
    assert_problem(
        &f,
        &p,
        "regions/uk.toml",
        "countries[0]",
        "the United Kingdom is 'GB'",
    );
    assert_problem(
        &f,
        &p,
        "regions/uk.toml",
        "countries[2]",
        "'GB' is listed twice",
    );
    assert_problem(
        &f,
        &p,
        "regions/uk.toml",
        "countries[3]",
        "'XX' is not an ISO 3166-1 alpha-2",
    );
}

#[test]
fn region_id_must_match_file_and_be_unique() {
    let f = Fixture::new();
    f.region(
        "europe",
        "id = \"eu\"\nname = \"EU again\"\nlegal_basis = \"GDPR\"\ncountries = [\"AT\"]\n",
    );
    f.region(
        "Bad",
        "id = \"Bad\"\nname = \"x\"\nlegal_basis = \"x\"\ncountries = [\"AT\"]\n",
    );
    let p = f.problems();
    assert_problem(
        &f,
        &p,
        "regions/europe.toml",
        "id",
        "differs from the file name",
    );
    assert_problem(&f, &p, "regions/europe.toml", "id", "already defined in");
    assert_problem(
        &f,
        &p,
        "regions/Bad.toml",
        "id",
        "not a valid jurisdiction id",
    );
}

#[test]
fn jurisdiction_ids_have_no_dash() {
    let f = Fixture::new();
    f.region(
        "eu-west",
        "id = \"eu-west\"\nname = \"x\"\nlegal_basis = \"x\"\ncountries = [\"IE\"]\n",
    );
    let p = f.problems();
    assert_problem(&f, &p, "regions/eu-west.toml", "id", "no '-'");
}

#[test]
fn region_needs_countries_names_and_one_way_of_listing() {
    let f = Fixture::new();
    f.region("a", "id = \"a\"\nname = \"\"\nlegal_basis = \" \"\n");
    f.region("b", "id = \"b\"\nname = \"B\"\nlegal_basis = \"x\"\nall_countries = true\ncountries = [\"DE\"]\n");
    let p = f.problems();
    assert_problem(&f, &p, "regions/a.toml", "countries", "lists no country");
    assert_problem(&f, &p, "regions/a.toml", "name", "is empty");
    assert_problem(&f, &p, "regions/a.toml", "legal_basis", "is empty");
    assert_problem(
        &f,
        &p,
        "regions/b.toml",
        "countries",
        "must be empty when all_countries = true",
    );
}

#[test]
fn missing_or_empty_regions_directory() {
    let f = Fixture::new();
    let err = policy::load_with_regions(&f.config_path(), Some(Path::new("/nonexistent/regions")))
        .unwrap_err();
    assert!(err.problems.iter().any(
        |p| p.field == "regions_dir" && p.message.contains("cannot read the regions directory")
    ));
    let empty = f.path("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = policy::load_with_regions(&f.config_path(), Some(&empty)).unwrap_err();
    assert!(
        err.problems
            .iter()
            .any(|p| p.message.contains("holds no region files"))
    );
}

#[test]
fn duplicate_relay_ids_and_addresses() {
    let f = Fixture::new();
    f.edit("id = \"us-nyc-1\"", "id = \"de-fra-1\"");
    let p = f.problems();
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "relay[1] \"de-fra-1\".id",
        "is used twice",
    );
    let f = Fixture::new();
    f.edit("127.0.1.2:4433", "127.0.1.1:4433");
    let p = f.problems();
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "relay[1] \"us-nyc-1\".quic_addr",
        "also the address of relay 'de-fra-1'",
    );
}

#[test]
fn relay_country_unknown_or_in_no_jurisdiction() {
    let f = Fixture::new();
    f.edit("country = \"US\"", "country = \"JP\"");
    let p = f.problems();
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "relay[1] \"us-nyc-1\".country",
        "JP (Japan) is in no jurisdiction",
    );
    let f = Fixture::new();
    f.edit("country = \"US\"", "country = \"USA\"");
    let p = f.problems();
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "relay[1] \"us-nyc-1\".country",
        "'USA' is not an ISO",
    );
}

#[test]
fn relay_fields_out_of_range() {
    let f = Fixture::new();
    f.edit(
        "latitude = 40.71\nlongitude = -74.0\nquic_addr = \"127.0.1.2:4433\"\nmax_participants = 10\nmax_bitrate_bps = 1000",
        "latitude = 95.0\nlongitude = -74.0\nquic_addr = \"localhost\"\nwebtransport_url = \"http://x/\"\nmax_participants = 0\nmax_bitrate_bps = 0",
    );
    let p = f.problems();
    let field = "relay[1] \"us-nyc-1\".";
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        &format!("{field}latitude"),
        "latitude must be in [-90, 90]",
    );
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        &format!("{field}quic_addr"),
        "not an ip:port address",
    );
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        &format!("{field}webtransport_url"),
        "not an https:// URL",
    );
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        &format!("{field}max_participants"),
        "is 0",
    );
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        &format!("{field}max_bitrate_bps"),
        "is 0",
    );
}

#[test]
fn absurd_bitrate_capacity() {
    let f = Fixture::new();
    f.edit(
        "max_bitrate_bps = 1000\n\n[[relay]]",
        "max_bitrate_bps = 18446744073709551615\n\n[[relay]]",
    );
    let p = f.problems();
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "relay[0] \"de-fra-1\".max_bitrate_bps",
        "is above 9007199254740992",
    );
}

#[test]
fn ticket_keys_for_unknown_jurisdictions_or_not_keys() {
    let f = Fixture::new();
    f.edit(
        "default_jurisdiction = \"eu\"\n",
        "default_jurisdiction = \"eu\"\n[ticket_keys]\nmars = []\neu = [\"0123\", \"97069a8e2b9dcdfc0376daffafc7f95fce34533d5b53cd1ecd218d735028a3ea\"]\n",
    );
    let p = f.problems();
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "ticket_keys.mars",
        "'mars' is not a jurisdiction",
    );
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "ticket_keys.eu[0]",
        "a key is 32 bytes",
    );
    assert_eq!(p.len(), 2, "{p:#?}");
}

#[test]
fn unknown_default_jurisdiction() {
    let f = Fixture::new();
    f.edit(
        "default_jurisdiction = \"eu\"",
        "default_jurisdiction = \"mars\"",
    );
    let p = f.problems();
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "default_jurisdiction",
        "'mars' is not a jurisdiction; use one of: eu, us",
    );
}

#[test]
fn plans_naming_unknown_jurisdictions_or_bad_defaults() {
    let f = Fixture::new();
    f.edit(
        "[[plan]]\nid = \"paid\"\njurisdictions = [\"eu\", \"us\"]",
        "[[plan]]\nid = \"paid\"\njurisdictions = [\"eu\", \"apac\", \"eu\"]\ndefault = \"us\"\n\n[[plan]]\nid = \"free\"\n\n[[plan]]\nid = \"odd\"\ndefault = \"us\"",
    );
    let p = f.problems();
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "plan[1] \"paid\".jurisdictions[1]",
        "'apac' is not a jurisdiction",
    );
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "plan[1] \"paid\".jurisdictions[2]",
        "'eu' is listed twice",
    );
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "plan[1] \"paid\".default",
        "not among its jurisdictions",
    );
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "plan[2] \"free\".id",
        "is used twice",
    );
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "plan[3] \"odd\".default",
        "a plan that may not choose gets the operator default",
    );
}

#[test]
fn tenant_problems() {
    let f = Fixture::new();
    let tenant = "[[tenant]]\nid = \"acme\"\nplan = \"paid\"\napi_key_sha256 = \"62c2fc277ab4261d4243be7b5cf49bdab2c39fed01ae2d4ce1cf9a38ec4e793c\"";
    f.edit(
        tenant,
        &format!(
            "{tenant}\n\n[[tenant]]\nid = \"acme\"\nplan = \"gold\"\napi_key_sha256 = \"secret-key\"\n\n\
             [[tenant]]\nid = \"copy\"\nplan = \"free\"\napi_key_sha256 = \"62c2fc277ab4261d4243be7b5cf49bdab2c39fed01ae2d4ce1cf9a38ec4e793c\""
        ),
    );
    let p = f.problems();
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "tenant[1] \"acme\".id",
        "is used twice",
    );
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "tenant[1] \"acme\".plan",
        "'gold' is not a plan; use one of: free, paid",
    );
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "tenant[1] \"acme\".api_key_sha256",
        "not 64 lower-case hex digits",
    );
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "tenant[2] \"copy\".api_key_sha256",
        "tenant 'acme' has the same API key",
    );
}

#[test]
fn default_relay_must_exist_inside_its_jurisdiction() {
    let f = Fixture::new();
    f.edit(
        "default_jurisdiction = \"eu\"\n",
        "default_jurisdiction = \"eu\"\n[default_relay]\neu = \"us-nyc-1\"\nus = \"nope\"\nmars = \"de-fra-1\"\n",
    );
    let p = f.problems();
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "default_relay.eu",
        "outside jurisdiction 'eu'",
    );
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "default_relay.us",
        "no relay has the id 'nope'",
    );
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "default_relay.mars",
        "'mars' is not a jurisdiction",
    );
}

#[test]
fn overlapping_and_malformed_overrides() {
    let f = Fixture::new();
    f.edit(
        "[[geoip.override]]\ncidr = \"127.0.0.2/32\"\ncountry = \"DE\"",
        "[[geoip.override]]\ncidr = \"127.0.0.0/24\"\ncountry = \"DE\"\n\
         [[geoip.override]]\ncidr = \"127.0.0.2/32\"\ncountry = \"FR\"\n\
         [[geoip.override]]\ncidr = \"10.1.2.3/16\"\ncountry = \"FR\"\n\
         [[geoip.override]]\ncidr = \"not-a-net\"\ncountry = \"ZZ\"\n\
         [[geoip.override]]\ncidr = \"2001:db8::/32\"\ncountry = \"FR\"\nlatitude = 48.0\n",
    );
    let p = f.problems();
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "geoip.override[1].cidr",
        "overlaps geoip.override[0] (127.0.0.0/24)",
    );
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "geoip.override[2].cidr",
        "has host bits set; did you mean 10.1.0.0/16?",
    );
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "geoip.override[3].cidr",
        "not a CIDR network",
    );
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "geoip.override[3].country",
        "'ZZ' is not an ISO",
    );
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "geoip.override[4].latitude",
        "both latitude and longitude",
    );
}

#[test]
fn unreadable_or_invalid_geoip_database() {
    let f = Fixture::new();
    f.edit("[geoip]\n", "[geoip]\ndatabase = \"../absent.mmdb\"\n");
    let p = f.problems();
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "geoip.database",
        "cannot use GeoIP database",
    );
    std::fs::write(f.path("junk.mmdb"), b"this is not a MaxMind database").unwrap();
    f.edit("[geoip]\n", "[geoip]\ndatabase = \"../junk.mmdb\"\n");
    let p = f.problems();
    assert_problem(&f, &p, "config/c.toml", "geoip.database", "junk.mmdb");
}

#[test]
fn bad_trusted_proxy_and_selection_values() {
    let f = Fixture::new();
    f.edit(
        "[geoip]\ntrusted_proxies = [\"10.0.0.0/8\"]",
        "[selection]\nload_penalty_km = -1.0\nstickiness_km = nan\n\n[geoip]\ntrusted_proxies = [\"10.0.0.0/8\", \"proxy.example\"]",
    );
    let p = f.problems();
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "geoip.trusted_proxies[1]",
        "not a CIDR network",
    );
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "selection.load_penalty_km",
        "kilometres >= 0",
    );
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "selection.stickiness_km",
        "kilometres >= 0",
    );
}

#[test]
fn plan_default_naming_an_unknown_jurisdiction() {
    let f = Fixture::new();
    f.edit(
        "jurisdictions = [\"eu\", \"us\"]",
        "jurisdictions = [\"eu\", \"us\"]\ndefault = \"apac\"",
    );
    let p = f.problems();
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "plan[1] \"paid\".default",
        "'apac' is not a jurisdiction; use one of: eu, us",
    );
    // The tenant on that plan is not reported again.
    assert_eq!(p.len(), 1, "{p:#?}");
}

#[test]
fn trusted_proxy_with_host_bits() {
    let f = Fixture::new();
    f.edit(
        "trusted_proxies = [\"10.0.0.0/8\"]",
        "trusted_proxies = [\"10.1.2.3/8\"]",
    );
    let p = f.problems();
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "geoip.trusted_proxies[0]",
        "has host bits set; did you mean 10.0.0.0/8?",
    );
}

#[test]
fn overlapping_ipv6_and_ipv4_mapped_overrides() {
    let f = Fixture::new();
    f.edit(
        "[[geoip.override]]\ncidr = \"127.0.0.2/32\"\ncountry = \"DE\"",
        "[[geoip.override]]\ncidr = \"2001:db8::/32\"\ncountry = \"DE\"\n\
         [[geoip.override]]\ncidr = \"2001:db8:ff::/48\"\ncountry = \"FR\"\n\
         [[geoip.override]]\ncidr = \"10.0.0.0/8\"\ncountry = \"DE\"\n\
         [[geoip.override]]\ncidr = \"::ffff:10.1.0.0/112\"\ncountry = \"FR\"\n",
    );
    let p = f.problems();
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "geoip.override[1].cidr",
        "overlaps geoip.override[0] (2001:db8::/32)",
    );
    // The IPv4-mapped form is the IPv4 network 10.1.0.0/16, inside 10.0.0.0/8.
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "geoip.override[3].cidr",
        "overlaps geoip.override[2] (10.0.0.0/8)",
    );
}

#[test]
fn unreadable_region_file() {
    let f = Fixture::new();
    // A directory where a region file should be: reading it fails.
    std::fs::create_dir(f.path("regions/ch.toml")).unwrap();
    let p = f.problems();
    assert_problem(&f, &p, "regions/ch.toml", "", "cannot read");
}

#[test]
fn region_problems_are_reported_even_when_the_config_does_not_parse() {
    let f = Fixture::new();
    f.config("default_jurisdiction = [");
    f.region(
        "uk",
        "id = \"uk\"\nname = \"UK\"\nlegal_basis = \"x\"\ncountries = [\"UK\"]\n",
    );
    let p = f.problems();
    assert_problem(&f, &p, "config/c.toml", "", "not valid config TOML");
    assert_problem(
        &f,
        &p,
        "regions/uk.toml",
        "countries[0]",
        "the United Kingdom is 'GB'",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let f = Fixture::new();
    f.region(
        "uk",
        "id = \"uk\"\nname = \"UK\"\nlegal_basis = \"x\"\ncountries = [\"UK\"]\n",
    );
    f.config(
        &BASE
            .replacen(
                "default_jurisdiction = \"eu\"",
                "default_jurisdiction = \"mars\"",
                1,
            )
            .replacen("country = \"US\"", "country = \"JP\"", 1)
            .replacen("plan = \"paid\"", "plan = \"gold\"", 1)
            .replacen("cidr = \"127.0.0.2/32\"", "cidr = \"127.0.0.2/8\"", 1),
    );
    let p = f.problems();
    assert_problem(&f, &p, "regions/uk.toml", "countries[0]", "not an ISO");
    assert_problem(&f, &p, "config/c.toml", "default_jurisdiction", "'mars'");
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "relay[1] \"us-nyc-1\".country",
        "in no jurisdiction",
    );
    assert_problem(&f, &p, "config/c.toml", "tenant[0] \"acme\".plan", "'gold'");
    assert_problem(
        &f,
        &p,
        "config/c.toml",
        "geoip.override[0].cidr",
        "host bits",
    );
    assert!(p.len() >= 5);
}

const DEV_KEY: &str = "97069a8e2b9dcdfc0376daffafc7f95fce34533d5b53cd1ecd218d735028a3ea";

fn with_routers(routers: &str) -> String {
    format!("{BASE}\n[ticket_keys]\neu = [\"{DEV_KEY}\"]\n{routers}")
}

fn router(id: &str, country: &str, jurisdictions: &str, extra: &str) -> String {
    format!(
        "\n[[router]]\nid = \"{id}\"\ncountry = \"{country}\"\njurisdictions = {jurisdictions}\nlisten = \"127.0.2.1:8080\"\nurl = \"http://127.0.2.1:8080\"\nplain_http = true\nsigning_key = \"r.key\"\npublic_key = \"{DEV_KEY}\"\nstore = \"r.sqlite\"\n{extra}"
    )
}

#[test]
fn a_valid_router_loads() {
    let f = Fixture::new();
    f.config(&with_routers(&router("fra", "DE", "[\"eu\"]", "")));
    let policy = policy::load(&f.config_path()).unwrap_or_else(|e| panic!("{e}"));
    let r = policy.router("fra").unwrap();
    assert_eq!(r.store.sqlite(), Some(f.path("config/r.sqlite").as_path()));
    assert!(r.serves(policy.jurisdiction_idx("eu").unwrap()));
}

#[test]
fn router_problems_are_each_reported() {
    let f = Fixture::new();
    let text = with_routers(&format!(
        "{}{}{}{}",
        // Outside the jurisdiction it claims, and its key is not trusted for us.
        router("nyc", "US", "[\"eu\", \"us\"]", ""),
        // A second router for eu; a bad URL; a malformed admin hash.
        router("fra", "DE", "[\"eu\"]", "admin_token_sha256 = \"xyz\"\n")
            .replace("url = \"http://127.0.2.1:8080\"", "url = \"ftp://router\""),
        router("ber", "DE", "[\"mars\"]", "").replace(DEV_KEY, "not-a-key"),
        router("fra", "XX", "[]", "")
            .replace("listen = \"127.0.2.1:8080\"", "listen = \"nowhere\""),
    ))
    .replace(
        "id = \"de-fra-1\"\n",
        "id = \"de-fra-1\"\ncredential_sha256 = \"ABC\"\n",
    );
    f.config(&text);
    let p = f.problems();
    let c = "config/c.toml";
    assert_problem(
        &f,
        &p,
        c,
        "router[0] \"nyc\".jurisdictions[0]",
        "a router in US cannot serve 'eu'",
    );
    assert_problem(
        &f,
        &p,
        c,
        "router[0] \"nyc\".jurisdictions[1]",
        "add its public key",
    );
    assert_problem(
        &f,
        &p,
        c,
        "router[1] \"fra\".jurisdictions[0]",
        "already served by router 'nyc'",
    );
    assert_problem(
        &f,
        &p,
        c,
        "router[1] \"fra\".url",
        "not an http:// or https:// URL",
    );
    assert_problem(
        &f,
        &p,
        c,
        "router[1] \"fra\".admin_token_sha256",
        "64 lower-case hex",
    );
    assert_problem(
        &f,
        &p,
        c,
        "router[2] \"ber\".jurisdictions[0]",
        "'mars' is not a jurisdiction",
    );
    assert_problem(&f, &p, c, "router[2] \"ber\".public_key", "keygen");
    assert_problem(&f, &p, c, "router[3] \"fra\".id", "used twice");
    assert_problem(&f, &p, c, "router[3] \"fra\".country", "XX");
    assert_problem(
        &f,
        &p,
        c,
        "router[3] \"fra\".jurisdictions",
        "list the jurisdictions",
    );
    assert_problem(&f, &p, c, "router[3] \"fra\".listen", "not an address");
    assert_problem(
        &f,
        &p,
        c,
        "relay[0] \"de-fra-1\".credential_sha256",
        "64 lower-case hex",
    );
}

/// `router(…)` serving HTTPS itself with `tls`, the lines in place of
/// `plain_http = true`, at `url`.
fn tls_router(id: &str, url: &str, tls: &str) -> String {
    router(id, "DE", "[\"eu\"]", "")
        .replace(
            "url = \"http://127.0.2.1:8080\"",
            &format!("url = \"{url}\""),
        )
        .replace("plain_http = true\n", tls)
}

#[test]
fn a_router_serves_https_unless_plain_http_is_explicit() {
    let f = Fixture::new();
    let good = "tls_cert = \"r.crt\"\ntls_key = \"r.pem\"\ntls_ca = \"ca.pem\"\n";
    f.config(&with_routers(&tls_router(
        "fra",
        "https://127.0.2.1:8080",
        good,
    )));
    let policy = policy::load(&f.config_path()).unwrap_or_else(|e| panic!("{e}"));
    let r = policy.router("fra").unwrap();
    assert_eq!(
        r.tls,
        Some((f.path("config/r.crt"), f.path("config/r.pem")))
    );
    assert_eq!(
        r.relay_trust(),
        Some((f.path("config/ca.pem"), "127.0.2.1".to_owned()))
    );
    // Relays verify the certificate for the name clients use, at the
    // address on the operator's network.
    f.config(&with_routers(&tls_router(
        "fra",
        "https://eu.example.org",
        &format!("{good}relay_url = \"https://10.0.0.2:8443\"\n"),
    )));
    let policy = policy::load(&f.config_path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        policy.router("fra").unwrap().relay_trust(),
        Some((f.path("config/ca.pem"), "eu.example.org".to_owned()))
    );

    let text = with_routers(&format!(
        "{}{}{}{}{}",
        // Neither certificate nor plain_http.
        tls_router("a", "https://127.0.2.1:8080", ""),
        // A certificate without its key.
        tls_router("b", "https://127.0.2.1:8080", "tls_cert = \"r.crt\"\ntls_ca = \"ca.pem\"\n"),
        // HTTPS served, http:// URLs given.
        tls_router(
            "c",
            "http://127.0.2.1:8080",
            "tls_cert = \"r.crt\"\ntls_key = \"r.pem\"\ntls_ca = \"ca.pem\"\nrelay_url = \"http://10.0.0.2:80\"\n",
        ),
        // HTTPS without the CA relays need.
        tls_router("d", "https://127.0.2.1:8080", "tls_cert = \"r.crt\"\ntls_key = \"r.pem\"\n"),
        // Plain HTTP with a certificate.
        tls_router("e", "http://127.0.2.1:8080", "plain_http = true\ntls_cert = \"r.crt\"\n"),
    ))
    .replace("[\"eu\"]", "[\"us\"]");
    f.config(&text);
    let p = f.problems();
    let c = "config/c.toml";
    assert_problem(
        &f,
        &p,
        c,
        "router[0] \"a\".tls_cert",
        "serves HTTPS: give tls_cert and tls_key",
    );
    assert_problem(
        &f,
        &p,
        c,
        "router[1] \"b\".tls_key",
        "serves HTTPS: give tls_cert and tls_key",
    );
    assert_problem(&f, &p, c, "router[2] \"c\".url", "its URLs are https://");
    assert_problem(
        &f,
        &p,
        c,
        "router[2] \"c\".relay_url",
        "its URLs are https://",
    );
    assert_problem(&f, &p, c, "router[3] \"d\".tls_ca", "give tls_ca");
    assert_problem(
        &f,
        &p,
        c,
        "router[4] \"e\".plain_http",
        "remove tls_cert and tls_key",
    );
}

const PG: &str = "postgres://rr@10.0.0.5:5432/rr";

/// `router(…)` on a PostgreSQL store (reached over TLS: `store_ca`).
fn pg_router(id: &str, store: &str, store_country: Option<&str>) -> String {
    router(id, "DE", "[\"eu\"]", "").replace(
        "store = \"r.sqlite\"\n",
        &format!(
            "store = \"{store}\"\nstore_ca = \"store-ca.pem\"\n{}",
            store_country.map_or(String::new(), |c| format!("store_country = \"{c}\"\n"))
        ),
    )
}

#[test]
fn routers_on_one_postgresql_store_are_replicas() {
    let f = Fixture::new();
    f.config(&with_routers(&format!(
        "{}{}",
        pg_router("fra-a", PG, Some("DE")),
        pg_router("fra-b", PG, Some("DE"))
    )));
    let policy = policy::load(&f.config_path()).unwrap_or_else(|e| panic!("{e}"));
    let a = policy.router("fra-a").unwrap();
    let replicas: Vec<&str> = policy.replicas(a).iter().map(|r| r.id.as_str()).collect();
    assert_eq!(replicas, ["fra-a", "fra-b"]);
    match &a.store {
        policy::StoreLocation::Postgres(pg) => {
            assert_eq!(
                (pg.url.as_str(), pg.country.to_string().as_str()),
                (PG, "DE")
            );
        }
        other => panic!("not PostgreSQL: {other:?}"),
    }
}

#[test]
fn a_postgresql_store_must_say_where_it_runs_hold_no_password_and_be_shared_to_share() {
    let f = Fixture::new();
    f.config(&with_routers(&format!(
        "{}{}{}{}{}",
        // The database is in the US: eu's records would leave the EU.
        pg_router("a", PG, Some("US")),
        // No store_country; a password in the URL.
        pg_router("b", "postgres://rr:secret@10.0.0.6/rr", None),
        // Serves eu beside "a" on another store: not a replica.
        pg_router("c", "postgres://rr@10.0.0.7/rr", Some("DE")),
        // store_country on a SQLite store.
        router("d", "DE", "[\"us\"]", "store_country = \"DE\"\n"),
        // A database on another machine without TLS; one on loopback may
        // go without.
        pg_router("e", "postgres://rr@10.0.0.5:5432/rr", Some("DE"))
            .replace("store_ca = \"store-ca.pem\"\n", ""),
    )));
    let p = f.problems();
    let c = "config/c.toml";
    assert_problem(
        &f,
        &p,
        c,
        "router[0] \"a\".store_country",
        "a store in US cannot hold the records of 'eu'",
    );
    assert_problem(
        &f,
        &p,
        c,
        "router[1] \"b\".store_country",
        "say where the PostgreSQL store runs",
    );
    assert_problem(&f, &p, c, "router[1] \"b\".store", "holds a password");
    assert_problem(
        &f,
        &p,
        c,
        "router[2] \"c\".jurisdictions[0]",
        "replicas that share one PostgreSQL store",
    );
    assert_problem(
        &f,
        &p,
        c,
        "router[3] \"d\".store_country",
        "only for a PostgreSQL store",
    );
    assert_problem(
        &f,
        &p,
        c,
        "router[4] \"e\".store_ca",
        "is not on this machine",
    );
    // The password is not repeated in the problems.
    assert!(p.iter().all(|p| !p.message.contains("secret")), "{p:?}");
}
