package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sag-gateway/sag/policy"
	"github.com/sag-gateway/sag/server/config"
)

// TestDeployExample checks the example deployment in deploy/: the replicas'
// config and allow-list are valid, the compose file gives each replica the
// config, the allow-list, a data volume of its own and the one shared keys
// volume, and the load balancer sends to every replica and checks /readyz.
func TestDeployExample(t *testing.T) {
	dir := filepath.Join("..", "..", "deploy")
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cfg, err := config.Parse("sag.yaml", read("sag.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("deploy/sag.yaml: %v", err)
	}
	if cfg.Store == "" || cfg.Auth != config.AuthDPoP || !strings.HasPrefix(cfg.PublicURL, "https://") {
		t.Errorf("deploy/sag.yaml: store %q, auth %q, public_url %q; want PostgreSQL, dpop and https", cfg.Store, cfg.Auth, cfg.PublicURL)
	}
	if _, err := policy.Parse("policy.yaml", read("policy.yaml")); err != nil {
		t.Errorf("deploy/policy.yaml: %v", err)
	}

	var compose struct {
		Services map[string]struct {
			Volumes         []string          `yaml:"volumes"`
			Environment     map[string]string `yaml:"environment"`
			StopGracePeriod string            `yaml:"stop_grace_period"`
			Secrets         []string          `yaml:"secrets"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(read("compose.yaml"), &compose); err != nil {
		t.Fatalf("deploy/compose.yaml: %v", err)
	}
	caddy := string(read("Caddyfile"))
	if !strings.Contains(caddy, "health_uri /readyz") || !strings.Contains(caddy, "flush_interval -1") {
		t.Error("deploy/Caddyfile: want health_uri /readyz and flush_interval -1 (streams pass as they come)")
	}
	dataVolumes := map[string]bool{}
	for _, name := range []string{"sag1", "sag2", "sag3"} {
		s, ok := compose.Services[name]
		if !ok {
			t.Errorf("deploy/compose.yaml: no service %s", name)
			continue
		}
		for _, want := range []string{"keys:/var/lib/sag/keys", "./sag.yaml:/etc/sag/sag.yaml:ro", "./policy.yaml:/etc/sag/policy.yaml:ro"} {
			if !slices.Contains(s.Volumes, want) {
				t.Errorf("deploy/compose.yaml: %s lacks the volume %s", name, want)
			}
		}
		for _, v := range s.Volumes {
			if vol, ok := strings.CutSuffix(v, ":/var/lib/sag"); ok {
				dataVolumes[vol] = true
			}
		}
		if grace, err := time.ParseDuration(s.StopGracePeriod); err != nil || grace <= 30*time.Second {
			t.Errorf("deploy/compose.yaml: %s stop_grace_period %q, want more than the 30 s drain", name, s.StopGracePeriod)
		}
		if s.Environment["PGPASSFILE"] == "" || !slices.Contains(s.Secrets, "pgpass") || !slices.Contains(s.Secrets, "sag-admin") {
			t.Errorf("deploy/compose.yaml: %s without its secrets (pgpass, sag-admin)", name)
		}
		if !strings.Contains(caddy, name+":8080") {
			t.Errorf("deploy/Caddyfile: %s:8080 is not behind the load balancer", name)
		}
	}
	if len(dataVolumes) != 3 {
		t.Errorf("deploy/compose.yaml: the replicas' data volumes %v, want one of its own each", dataVolumes)
	}
}
