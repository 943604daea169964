//! Registry connection flags shared by the subcommands that talk to
//! registries, so `--plain-http` and `--insecure` mean the same everywhere.

/// How to reach the registries named on the command line.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NetFlags {
    /// Plain HTTP to the registries named on the command line (loopback
    /// registries get it anyway unless --insecure asks for HTTPS).
    #[arg(long)]
    pub plain_http: bool,
    /// HTTPS without verifying the certificate of the registries named on
    /// the command line (self-signed test registries). Others stay verified.
    #[arg(long, short = 'k', alias = "skip-verify")]
    pub insecure: bool,
}

impl NetFlags {
    /// A client config applying the flags to `registries` (host[:port]).
    pub fn client_config<'a>(
        &self,
        registries: impl IntoIterator<Item = &'a str>,
    ) -> registry::ClientConfig {
        let mut cfg = registry::ClientConfig::default();
        for r in registries {
            if self.plain_http {
                cfg.plain_http_hosts.push(r.to_string());
            }
            if self.insecure {
                cfg.skip_verify_hosts.push(r.to_string());
            }
        }
        cfg
    }

    /// [`NetFlags::client_config`] for the registries of SRC and DST image
    /// names (`oci:` layouts have none).
    pub fn client_config_for(&self, images: &[&str]) -> registry::ClientConfig {
        let named: Vec<String> = images
            .iter()
            .filter(|s| !s.starts_with("oci:"))
            .filter_map(|s| registry::Reference::parse(s).ok())
            .map(|r| r.registry().to_string())
            .collect();
        self.client_config(named.iter().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_apply_to_the_named_registries_only() {
        let f = NetFlags {
            plain_http: false,
            insecure: true,
        };
        let cfg = f.client_config(["127.0.0.1:5000", "reg.example"]);
        assert_eq!(cfg.skip_verify_hosts, ["127.0.0.1:5000", "reg.example"]);
        assert!(cfg.plain_http_hosts.is_empty() && !cfg.plain_http);
        let cfg = NetFlags::default().client_config(["a"]);
        assert!(cfg.skip_verify_hosts.is_empty() && cfg.plain_http_hosts.is_empty());
    }
}
