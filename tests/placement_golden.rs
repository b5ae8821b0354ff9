//! Ring placement against twemproxy's own choices: for each pool in the golden data, the server
//! nutcracker put each of 1,000 keys on.

use ringproxy::config::Config;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The pool YAML that each file's header holds verbatim.
fn pool_yaml(text: &str) -> String {
    let mut yaml = String::new();
    let mut in_config = false;
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        if line.contains("Pool config, verbatim") {
            in_config = true;
            continue;
        }
        if in_config && line.starts_with("#   ") {
            yaml.push_str(&line[4..]);
            yaml.push('\n');
        }
    }
    yaml
}

#[test]
fn every_golden_pool_places_every_key_as_twemproxy() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/twemproxy");
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("placement-") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let config = Config::parse(&name, &pool_yaml(&text)).unwrap_or_else(|e| panic!("{e}"));
        let pool = &config.pools[0];
        let ring = pool.ring(&vec![true; pool.servers.len()]);
        let mut keys = 0;
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (key, want) = line.split_once('\t').unwrap();
            let want: usize = want.parse().unwrap();
            assert_eq!(
                ring.server_for(&unhex(key)),
                Some(want),
                "{name}: key {key}"
            );
            keys += 1;
        }
        assert!(keys >= 1000, "{name}: {keys} keys");
        files += 1;
    }
    assert_eq!(files, 18);
}
