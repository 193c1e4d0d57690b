package server

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// layers lists SAG's packages from the top of DESIGN.md's import chain to
// the bottom; a package may import only packages below its own layer.
var layers = [][]string{
	{"cmd/sag"},
	{"server", "server/config"},
	{"agui", "a2a"},
	{"pipeline"},
	{"policy", "consent", "upstreams"},
	{"identity"},
	{"store", "schemas"},
	{"internal/lru", "internal/jcs", "internal/jsonscan", "internal/pgtest"},
}

const module = "github.com/sag-gateway/sag/"

type goPackage struct {
	ImportPath string
	Doc        string
	Imports    []string
}

func listPackages(t *testing.T) []goPackage {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", "../...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []goPackage
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p goPackage
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// TestPackageDocs checks that every package says what it owns.
func TestPackageDocs(t *testing.T) {
	for _, p := range listPackages(t) {
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("package %s has no doc comment", p.ImportPath)
		}
	}
}

// TestImportDirection checks DESIGN.md's dependency rule: imports point down
// the chain, never up or sideways within a layer (server and its config
// subpackage excepted); fixtures are for tests, the demo and the benchmark.
func TestImportDirection(t *testing.T) {
	layerOf := map[string]int{}
	for i, l := range layers {
		for _, p := range l {
			layerOf[p] = i
		}
	}
	for _, p := range listPackages(t) {
		from := strings.TrimPrefix(p.ImportPath, module)
		li, ok := layerOf[from]
		if !ok {
			continue // fixtures, e2e helpers, commands of fixtures
		}
		for _, imp := range p.Imports {
			to, internal := strings.CutPrefix(imp, module)
			if !internal {
				continue
			}
			if to == "fixtures" || strings.HasPrefix(to, "fixtures/") {
				if from != "cmd/sag" {
					t.Errorf("%s imports %s: only tests and cmd/sag (demo, bench) may use fixtures", from, to)
				}
				continue
			}
			lj, ok := layerOf[to]
			if !ok {
				t.Errorf("%s imports %s, which has no place in the layer list", from, to)
				continue
			}
			if lj < li || (lj == li && !(from == "server" && to == "server/config")) {
				t.Errorf("%s imports %s: imports must point down DESIGN.md's chain", from, to)
			}
		}
	}
}

// TestPipelineIsProtocolNeutral keeps protocol SDKs out of the pipeline:
// channels translate, the pipeline decides.
func TestPipelineIsProtocolNeutral(t *testing.T) {
	for _, p := range listPackages(t) {
		if p.ImportPath != module+"pipeline" {
			continue
		}
		for _, imp := range p.Imports {
			for _, sdk := range []string{"github.com/modelcontextprotocol/go-sdk", "github.com/a2aproject/a2a-go", "github.com/mark3labs/mcp-go"} {
				if strings.HasPrefix(imp, sdk) {
					t.Errorf("pipeline imports %s: it must stay protocol-neutral", imp)
				}
			}
		}
		return
	}
	t.Fatal("package pipeline not found")
}
