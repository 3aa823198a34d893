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
        self.problems_of("the fixture")
    }

    /// The problems loading the fixture reports; `case` names it in a failure.
    fn problems_of(&self, case: &str) -> Vec<ConfigProblem> {
        match policy::load(&self.config_path()) {
            Ok(_) => panic!("{case}: config was accepted"),
            Err(e) => {
                // The rendered error lists each problem on its own line.
                let text = e.to_string();
                for p in &e.problems {
                    assert!(text.contains(&p.message), "{case}: {text}");
                }
                e.problems
            }
        }
    }
}

/// Whether one of `problems` is in `file` (relative to the fixture) with a
/// field and a message containing the given fragments.
fn has_problem(
    f: &Fixture,
    problems: &[ConfigProblem],
    file: &str,
    field: &str,
    message: &str,
) -> bool {
    let file = f.path(file);
    problems
        .iter()
        .any(|p| p.file == file && p.field.contains(field) && p.message.contains(message))
}

/// Asserts one problem in `file` (relative to the fixture) whose field and
/// message contain the given fragments.
fn assert_problem(f: &Fixture, problems: &[ConfigProblem], file: &str, field: &str, message: &str) {
    assert!(
        has_problem(f, problems, file, field, message),
        "no problem in {} at '{field}' saying '{message}'; got:\n{problems:#?}",
        f.path(file).display()
    );
}

#[test]
fn base_fixture_is_valid() {
    let f = Fixture::new();
    let policy = policy::load(&f.config_path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(policy.relays().len(), 2);
    assert_eq!(policy.jurisdictions().len(), 2);
}

/// The fixture's config file, where problems name it.
const CONFIG: &str = "config/c.toml";

/// The config file of a [`Case`].
enum Config {
    /// The base config with each `(from, to)` replaced in turn; each `from`
    /// must occur in the text so far.
    Edited(&'static [(&'static str, &'static str)]),
    /// Other text altogether.
    Text(String),
}

/// How many problems a [`Case`] gives in all, where that is part of it.
enum Count {
    Any,
    Exactly(usize),
    AtLeast(usize),
}

/// A mistake in the fixture and the problems it must be reported with.
struct Case {
    /// Names the case in failure messages.
    name: &'static str,
    config: Config,
    /// Region files written beside the valid ones: (file stem, text).
    regions: &'static [(&'static str, &'static str)],
    /// Each must be among the problems: (file relative to the fixture, a
    /// part of the field, a part of the message).
    problems: &'static [(&'static str, &'static str, &'static str)],
    count: Count,
}

fn cases() -> Vec<Case> {
    use Config::{Edited, Text};
    vec![
        Case {
            name: "a config syntax error names the file and line",
            config: Text("default_jurisdiction = \"eu\n".to_owned()),
            regions: &[],
            // One problem, which says both.
            problems: &[
                (CONFIG, "", "not valid config TOML"),
                (CONFIG, "", "line 1"),
            ],
            count: Count::Exactly(1),
        },
        Case {
            name: "an unknown config field is an error",
            config: Edited(&[(
                "max_participants = 10\nmax_bitrate_bps = 1000\n\n[[relay]]",
                "max_participants = 10\nmax_bitrate_bps = 1000\ncapacity = 5\n\n[[relay]]",
            )]),
            regions: &[],
            problems: &[(CONFIG, "", "unknown field `capacity`")],
            count: Count::Any,
        },
        Case {
            name: "an unknown region field, and region syntax",
            config: Edited(&[]),
            regions: &[
                (
                    "ca",
                    "id = \"ca\"\nname = \"Canada\"\nlegal_basis = \"PIPEDA\"\ncountry = [\"CA\"]\n",
                ),
                ("ch", "id = \"ch\"\nname = "),
            ],
            problems: &[
                ("regions/ca.toml", "", "unknown field `country`"),
                ("regions/ch.toml", "", "not a valid region file"),
            ],
            count: Count::Any,
        },
        Case {
            name: "unknown and duplicate country codes",
            config: Edited(&[]),
            regions: &[(
                "uk",
                "id = \"uk\"\nname = \"UK\"\nlegal_basis = \"UK GDPR\"\ncountries = [\"UK\", \"GB\", \"GB\", \"XX\"]\n",
            )],
            problems: &[
                (
                    "regions/uk.toml",
                    "countries[0]",
                    "the United Kingdom is 'GB'",
                ),
                ("regions/uk.toml", "countries[2]", "'GB' is listed twice"),
                (
                    "regions/uk.toml",
                    "countries[3]",
                    "'XX' is not an ISO 3166-1 alpha-2",
                ),
            ],
            count: Count::Any,
        },
        Case {
            name: "a region id must match its file and be unique",
            config: Edited(&[]),
            regions: &[
                (
                    "europe",
                    "id = \"eu\"\nname = \"EU again\"\nlegal_basis = \"GDPR\"\ncountries = [\"AT\"]\n",
                ),
                (
                    "Bad",
                    "id = \"Bad\"\nname = \"x\"\nlegal_basis = \"x\"\ncountries = [\"AT\"]\n",
                ),
            ],
            problems: &[
                ("regions/europe.toml", "id", "differs from the file name"),
                ("regions/europe.toml", "id", "already defined in"),
                ("regions/Bad.toml", "id", "not a valid jurisdiction id"),
            ],
            count: Count::Any,
        },
        Case {
            name: "jurisdiction ids have no dash",
            config: Edited(&[]),
            regions: &[(
                "eu-west",
                "id = \"eu-west\"\nname = \"x\"\nlegal_basis = \"x\"\ncountries = [\"IE\"]\n",
            )],
            problems: &[("regions/eu-west.toml", "id", "no '-'")],
            count: Count::Any,
        },
        Case {
            name: "a region needs countries, names and one way of listing them",
            config: Edited(&[]),
            regions: &[
                ("a", "id = \"a\"\nname = \"\"\nlegal_basis = \" \"\n"),
                (
                    "b",
                    "id = \"b\"\nname = \"B\"\nlegal_basis = \"x\"\nall_countries = true\ncountries = [\"DE\"]\n",
                ),
            ],
            problems: &[
                ("regions/a.toml", "countries", "lists no country"),
                ("regions/a.toml", "name", "is empty"),
                ("regions/a.toml", "legal_basis", "is empty"),
                (
                    "regions/b.toml",
                    "countries",
                    "must be empty when all_countries = true",
                ),
            ],
            count: Count::Any,
        },
        Case {
            name: "a duplicate relay id",
            config: Edited(&[("id = \"us-nyc-1\"", "id = \"de-fra-1\"")]),
            regions: &[],
            problems: &[(CONFIG, "relay[1] \"de-fra-1\".id", "is used twice")],
            count: Count::Any,
        },
        Case {
            name: "a duplicate relay address",
            config: Edited(&[("127.0.1.2:4433", "127.0.1.1:4433")]),
            regions: &[],
            problems: &[(
                CONFIG,
                "relay[1] \"us-nyc-1\".quic_addr",
                "also the address of relay 'de-fra-1'",
            )],
            count: Count::Any,
        },
        Case {
            name: "a relay country in no jurisdiction",
            config: Edited(&[("country = \"US\"", "country = \"JP\"")]),
            regions: &[],
            problems: &[(
                CONFIG,
                "relay[1] \"us-nyc-1\".country",
                "JP (Japan) is in no jurisdiction",
            )],
            count: Count::Any,
        },
        Case {
            name: "an unknown relay country",
            config: Edited(&[("country = \"US\"", "country = \"USA\"")]),
            regions: &[],
            problems: &[(
                CONFIG,
                "relay[1] \"us-nyc-1\".country",
                "'USA' is not an ISO",
            )],
            count: Count::Any,
        },
        Case {
            name: "relay fields out of range",
            config: Edited(&[(
                "latitude = 40.71\nlongitude = -74.0\nquic_addr = \"127.0.1.2:4433\"\nmax_participants = 10\nmax_bitrate_bps = 1000",
                "latitude = 95.0\nlongitude = -74.0\nquic_addr = \"localhost\"\nwebtransport_url = \"http://x/\"\nmax_participants = 0\nmax_bitrate_bps = 0",
            )]),
            regions: &[],
            problems: &[
                (
                    CONFIG,
                    "relay[1] \"us-nyc-1\".latitude",
                    "latitude must be in [-90, 90]",
                ),
                (
                    CONFIG,
                    "relay[1] \"us-nyc-1\".quic_addr",
                    "not an ip:port address",
                ),
                (
                    CONFIG,
                    "relay[1] \"us-nyc-1\".webtransport_url",
                    "not an https:// URL",
                ),
                (CONFIG, "relay[1] \"us-nyc-1\".max_participants", "is 0"),
                (CONFIG, "relay[1] \"us-nyc-1\".max_bitrate_bps", "is 0"),
            ],
            count: Count::Any,
        },
        Case {
            name: "an absurd bitrate capacity",
            config: Edited(&[(
                "max_bitrate_bps = 1000\n\n[[relay]]",
                "max_bitrate_bps = 18446744073709551615\n\n[[relay]]",
            )]),
            regions: &[],
            problems: &[(
                CONFIG,
                "relay[0] \"de-fra-1\".max_bitrate_bps",
                "is above 9007199254740992",
            )],
            count: Count::Any,
        },
        Case {
            name: "ticket keys for unknown jurisdictions, or not keys",
            config: Edited(&[(
                "default_jurisdiction = \"eu\"\n",
                "default_jurisdiction = \"eu\"\n[ticket_keys]\nmars = []\neu = [\"0123\", \"97069a8e2b9dcdfc0376daffafc7f95fce34533d5b53cd1ecd218d735028a3ea\"]\n",
            )]),
            regions: &[],
            problems: &[
                (CONFIG, "ticket_keys.mars", "'mars' is not a jurisdiction"),
                (CONFIG, "ticket_keys.eu[0]", "a key is 32 bytes"),
            ],
            count: Count::Exactly(2),
        },
        Case {
            name: "an unknown default jurisdiction",
            config: Edited(&[(
                "default_jurisdiction = \"eu\"",
                "default_jurisdiction = \"mars\"",
            )]),
            regions: &[],
            problems: &[(
                CONFIG,
                "default_jurisdiction",
                "'mars' is not a jurisdiction; use one of: eu, us",
            )],
            count: Count::Any,
        },
        Case {
            name: "plans naming unknown jurisdictions, or bad defaults",
            config: Edited(&[(
                "[[plan]]\nid = \"paid\"\njurisdictions = [\"eu\", \"us\"]",
                "[[plan]]\nid = \"paid\"\njurisdictions = [\"eu\", \"apac\", \"eu\"]\ndefault = \"us\"\n\n[[plan]]\nid = \"free\"\n\n[[plan]]\nid = \"odd\"\ndefault = \"us\"",
            )]),
            regions: &[],
            problems: &[
                (
                    CONFIG,
                    "plan[1] \"paid\".jurisdictions[1]",
                    "'apac' is not a jurisdiction",
                ),
                (
                    CONFIG,
                    "plan[1] \"paid\".jurisdictions[2]",
                    "'eu' is listed twice",
                ),
                (
                    CONFIG,
                    "plan[1] \"paid\".default",
                    "not among its jurisdictions",
                ),
                (CONFIG, "plan[2] \"free\".id", "is used twice"),
                (
                    CONFIG,
                    "plan[3] \"odd\".default",
                    "a plan that may not choose gets the operator default",
                ),
            ],
            count: Count::Any,
        },
        Case {
            name: "tenant problems",
            // Two more tenants after acme.
            config: Edited(&[(
                "api_key_sha256 = \"62c2fc277ab4261d4243be7b5cf49bdab2c39fed01ae2d4ce1cf9a38ec4e793c\"",
                "api_key_sha256 = \"62c2fc277ab4261d4243be7b5cf49bdab2c39fed01ae2d4ce1cf9a38ec4e793c\"\n\n\
                 [[tenant]]\nid = \"acme\"\nplan = \"gold\"\napi_key_sha256 = \"secret-key\"\n\n\
                 [[tenant]]\nid = \"copy\"\nplan = \"free\"\napi_key_sha256 = \"62c2fc277ab4261d4243be7b5cf49bdab2c39fed01ae2d4ce1cf9a38ec4e793c\"",
            )]),
            regions: &[],
            problems: &[
                (CONFIG, "tenant[1] \"acme\".id", "is used twice"),
                (
                    CONFIG,
                    "tenant[1] \"acme\".plan",
                    "'gold' is not a plan; use one of: free, paid",
                ),
                (
                    CONFIG,
                    "tenant[1] \"acme\".api_key_sha256",
                    "not 64 lower-case hex digits",
                ),
                (
                    CONFIG,
                    "tenant[2] \"copy\".api_key_sha256",
                    "tenant 'acme' has the same API key",
                ),
            ],
            count: Count::Any,
        },
        Case {
            name: "a default relay must exist, inside its jurisdiction",
            config: Edited(&[(
                "default_jurisdiction = \"eu\"\n",
                "default_jurisdiction = \"eu\"\n[default_relay]\neu = \"us-nyc-1\"\nus = \"nope\"\nmars = \"de-fra-1\"\n",
            )]),
            regions: &[],
            problems: &[
                (CONFIG, "default_relay.eu", "outside jurisdiction 'eu'"),
                (CONFIG, "default_relay.us", "no relay has the id 'nope'"),
                (CONFIG, "default_relay.mars", "'mars' is not a jurisdiction"),
            ],
            count: Count::Any,
        },
        Case {
            name: "overlapping and malformed overrides",
            config: Edited(&[(
                "[[geoip.override]]\ncidr = \"127.0.0.2/32\"\ncountry = \"DE\"",
                "[[geoip.override]]\ncidr = \"127.0.0.0/24\"\ncountry = \"DE\"\n\
                 [[geoip.override]]\ncidr = \"127.0.0.2/32\"\ncountry = \"FR\"\n\
                 [[geoip.override]]\ncidr = \"10.1.2.3/16\"\ncountry = \"FR\"\n\
                 [[geoip.override]]\ncidr = \"not-a-net\"\ncountry = \"ZZ\"\n\
                 [[geoip.override]]\ncidr = \"2001:db8::/32\"\ncountry = \"FR\"\nlatitude = 48.0\n",
            )]),
            regions: &[],
            problems: &[
                (
                    CONFIG,
                    "geoip.override[1].cidr",
                    "overlaps geoip.override[0] (127.0.0.0/24)",
                ),
                (
                    CONFIG,
                    "geoip.override[2].cidr",
                    "has host bits set; did you mean 10.1.0.0/16?",
                ),
                (CONFIG, "geoip.override[3].cidr", "not a CIDR network"),
                (CONFIG, "geoip.override[3].country", "'ZZ' is not an ISO"),
                (
                    CONFIG,
                    "geoip.override[4].latitude",
                    "both latitude and longitude",
                ),
            ],
            count: Count::Any,
        },
        Case {
            name: "a bad trusted proxy and selection values",
            config: Edited(&[(
                "[geoip]\ntrusted_proxies = [\"10.0.0.0/8\"]",
                "[selection]\nload_penalty_km = -1.0\nstickiness_km = nan\n\n[geoip]\ntrusted_proxies = [\"10.0.0.0/8\", \"proxy.example\"]",
            )]),
            regions: &[],
            problems: &[
                (CONFIG, "geoip.trusted_proxies[1]", "not a CIDR network"),
                (CONFIG, "selection.load_penalty_km", "kilometres >= 0"),
                (CONFIG, "selection.stickiness_km", "kilometres >= 0"),
            ],
            count: Count::Any,
        },
        Case {
            name: "a plan default naming an unknown jurisdiction",
            config: Edited(&[(
                "jurisdictions = [\"eu\", \"us\"]",
                "jurisdictions = [\"eu\", \"us\"]\ndefault = \"apac\"",
            )]),
            regions: &[],
            problems: &[(
                CONFIG,
                "plan[1] \"paid\".default",
                "'apac' is not a jurisdiction; use one of: eu, us",
            )],
            // The tenant on that plan is not reported again.
            count: Count::Exactly(1),
        },
        Case {
            name: "a trusted proxy with host bits",
            config: Edited(&[(
                "trusted_proxies = [\"10.0.0.0/8\"]",
                "trusted_proxies = [\"10.1.2.3/8\"]",
            )]),
            regions: &[],
            problems: &[(
                CONFIG,
                "geoip.trusted_proxies[0]",
                "has host bits set; did you mean 10.0.0.0/8?",
            )],
            count: Count::Any,
        },
        Case {
            name: "overlapping IPv6 and IPv4-mapped overrides",
            config: Edited(&[(
                "[[geoip.override]]\ncidr = \"127.0.0.2/32\"\ncountry = \"DE\"",
                "[[geoip.override]]\ncidr = \"2001:db8::/32\"\ncountry = \"DE\"\n\
                 [[geoip.override]]\ncidr = \"2001:db8:ff::/48\"\ncountry = \"FR\"\n\
                 [[geoip.override]]\ncidr = \"10.0.0.0/8\"\ncountry = \"DE\"\n\
                 [[geoip.override]]\ncidr = \"::ffff:10.1.0.0/112\"\ncountry = \"FR\"\n",
            )]),
            regions: &[],
            problems: &[
                (
                    CONFIG,
                    "geoip.override[1].cidr",
                    "overlaps geoip.override[0] (2001:db8::/32)",
                ),
                // The IPv4-mapped form is the IPv4 network 10.1.0.0/16, inside 10.0.0.0/8.
                (
                    CONFIG,
                    "geoip.override[3].cidr",
                    "overlaps geoip.override[2] (10.0.0.0/8)",
                ),
            ],
            count: Count::Any,
        },
        Case {
            name: "region problems are reported even when the config does not parse",
            config: Text("default_jurisdiction = [".to_owned()),
            regions: &[(
                "uk",
                "id = \"uk\"\nname = \"UK\"\nlegal_basis = \"x\"\ncountries = [\"UK\"]\n",
            )],
            problems: &[
                (CONFIG, "", "not valid config TOML"),
                (
                    "regions/uk.toml",
                    "countries[0]",
                    "the United Kingdom is 'GB'",
                ),
            ],
            count: Count::Any,
        },
        Case {
            name: "every problem is reported at once",
            config: Edited(&[
                (
                    "default_jurisdiction = \"eu\"",
                    "default_jurisdiction = \"mars\"",
                ),
                ("country = \"US\"", "country = \"JP\""),
                ("plan = \"paid\"", "plan = \"gold\""),
                ("cidr = \"127.0.0.2/32\"", "cidr = \"127.0.0.2/8\""),
            ]),
            regions: &[(
                "uk",
                "id = \"uk\"\nname = \"UK\"\nlegal_basis = \"x\"\ncountries = [\"UK\"]\n",
            )],
            problems: &[
                ("regions/uk.toml", "countries[0]", "not an ISO"),
                (CONFIG, "default_jurisdiction", "'mars'"),
                (
                    CONFIG,
                    "relay[1] \"us-nyc-1\".country",
                    "in no jurisdiction",
                ),
                (CONFIG, "tenant[0] \"acme\".plan", "'gold'"),
                (CONFIG, "geoip.override[0].cidr", "host bits"),
            ],
            count: Count::AtLeast(5),
        },
        Case {
            name: "router problems are each reported",
            config: Text(
                with_routers(&format!(
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
                ),
            ),
            regions: &[],
            problems: &[
                (
                    CONFIG,
                    "router[0] \"nyc\".jurisdictions[0]",
                    "a router in US cannot serve 'eu'",
                ),
                (
                    CONFIG,
                    "router[0] \"nyc\".jurisdictions[1]",
                    "add its public key",
                ),
                (
                    CONFIG,
                    "router[1] \"fra\".jurisdictions[0]",
                    "already served by router 'nyc'",
                ),
                (
                    CONFIG,
                    "router[1] \"fra\".url",
                    "not an http:// or https:// URL",
                ),
                (
                    CONFIG,
                    "router[1] \"fra\".admin_token_sha256",
                    "64 lower-case hex",
                ),
                (
                    CONFIG,
                    "router[2] \"ber\".jurisdictions[0]",
                    "'mars' is not a jurisdiction",
                ),
                (CONFIG, "router[2] \"ber\".public_key", "keygen"),
                (CONFIG, "router[3] \"fra\".id", "used twice"),
                (CONFIG, "router[3] \"fra\".country", "XX"),
                (
                    CONFIG,
                    "router[3] \"fra\".jurisdictions",
                    "list the jurisdictions",
                ),
                (CONFIG, "router[3] \"fra\".listen", "not an address"),
                (
                    CONFIG,
                    "relay[0] \"de-fra-1\".credential_sha256",
                    "64 lower-case hex",
                ),
            ],
            count: Count::Any,
        },
    ]
}

#[test]
fn each_mistake_gives_its_problems() {
    for case in cases() {
        let f = Fixture::new();
        for (stem, text) in case.regions {
            f.region(stem, text);
        }
        match case.config {
            Config::Edited(edits) => {
                let mut text = BASE.to_owned();
                for (from, to) in edits {
                    assert!(
                        text.contains(from),
                        "{}: fixture text not found: {from}",
                        case.name
                    );
                    text = text.replacen(from, to, 1);
                }
                f.config(&text);
            }
            Config::Text(text) => f.config(&text),
        }
        let p = f.problems_of(case.name);
        for (file, field, message) in case.problems {
            assert!(
                has_problem(&f, &p, file, field, message),
                "{}: no problem in {} at '{field}' saying '{message}'; got:\n{p:#?}",
                case.name,
                f.path(file).display()
            );
        }
        match case.count {
            Count::Any => {}
            Count::Exactly(n) => assert_eq!(p.len(), n, "{}: {p:#?}", case.name),
            Count::AtLeast(n) => assert!(p.len() >= n, "{}: {p:#?}", case.name),
        }
    }
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
fn unreadable_region_file() {
    let f = Fixture::new();
    // A directory where a region file should be: reading it fails.
    std::fs::create_dir(f.path("regions/ch.toml")).unwrap();
    let p = f.problems();
    assert_problem(&f, &p, "regions/ch.toml", "", "cannot read");
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

#[test]
fn a_router_named_by_dns_gets_its_certificate_over_acme_when_the_config_has_acme() {
    let f = Fixture::new();
    let acme =
        "\n[acme]\ndirectory = \"https://acme.example.org/directory\"\nstate_dir = \"acme\"\n";
    // No certificate files, a host name in its url, [acme]: over ACME.
    f.config(&format!(
        "{}{acme}",
        with_routers(&tls_router(
            "fra",
            "https://eu.example.org",
            "tls_ca = \"ca.pem\"\nrelay_url = \"https://10.0.0.2:8443\"\n"
        ))
    ));
    let policy = policy::load(&f.config_path()).unwrap_or_else(|e| panic!("{e}"));
    let r = policy.router("fra").unwrap();
    assert_eq!(r.acme.as_deref(), Some("eu.example.org"));
    assert_eq!(r.tls, None);
    assert!(r.serves_https());
    // Certificate files win over ACME.
    f.config(&format!(
        "{}{acme}",
        with_routers(&tls_router(
            "fra",
            "https://eu.example.org",
            "tls_cert = \"r.crt\"\ntls_key = \"r.pem\"\ntls_ca = \"ca.pem\"\nrelay_url = \"https://10.0.0.2:8443\"\n"
        ))
    ));
    let policy = policy::load(&f.config_path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(policy.router("fra").unwrap().acme, None);
    // An address is no name a CA certifies; without [acme] there is no CA.
    let text = with_routers(&format!(
        "{}{}",
        tls_router(
            "a",
            "https://127.0.2.1:8080",
            "tls_ca = \"ca.pem\"\nrelay_url = \"https://10.0.0.2:8443\"\n"
        ),
        tls_router(
            "b",
            "https://eu.example.org",
            "tls_ca = \"ca.pem\"\nrelay_url = \"https://10.0.0.2:8443\"\n"
        ),
    ))
    .replace("[\"eu\"]", "[\"us\"]");
    f.config(&format!("{text}{acme}"));
    let p = f.problems();
    let c = "config/c.toml";
    assert_problem(
        &f,
        &p,
        c,
        "router[0] \"a\".tls_cert",
        "or [acme] and an https:// url naming a host",
    );
    assert!(
        !p.iter()
            .any(|problem| problem.field.starts_with("router[1] \"b\".tls")),
        "{p:?}"
    );
    f.config(&text);
    let p = f.problems();
    assert_problem(
        &f,
        &p,
        c,
        "router[1] \"b\".tls_cert",
        "serves HTTPS: give tls_cert and tls_key",
    );
}

#[test]
fn routers_sharing_a_name_cannot_get_their_certificate_over_acme() {
    let f = Fixture::new();
    let acme =
        "\n[acme]\ndirectory = \"https://acme.example.org/directory\"\nstate_dir = \"acme\"\n";
    let tls = "tls_ca = \"ca.pem\"\nrelay_url = \"https://10.0.0.2:8443\"\n";
    // Replicas behind one name, on one PostgreSQL store.
    let replica = |id: &str| {
        tls_router(id, "https://eu.example.org", tls).replace(
            "store = \"r.sqlite\"\n",
            &format!("store = \"{PG}\"\nstore_country = \"DE\"\nstore_ca = \"store-ca.pem\"\n"),
        )
    };
    f.config(&format!(
        "{}{acme}",
        with_routers(&format!("{}{}", replica("fra-a"), replica("fra-b")))
    ));
    let p = f.problems();
    let c = "config/c.toml";
    for (i, (id, other)) in [("fra-a", "fra-b"), ("fra-b", "fra-a")].iter().enumerate() {
        assert_problem(
            &f,
            &p,
            c,
            &format!("router[{i}] \"{id}\".url"),
            &format!("also the name of router(s) {other}"),
        );
    }
}
