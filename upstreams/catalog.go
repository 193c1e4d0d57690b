package upstreams

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Separator joins an upstream's name and a tool or prompt name.
const Separator = "__"

var toolNameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`)

// Tool is one tool in the aggregated catalog.
type Tool struct {
	// Name is the name clients see.
	Name string
	// Upstream is the upstream that serves it, and Original its name there.
	Upstream, Original string
	// Def is the definition clients see (Name rewritten); never mutate it.
	Def *mcp.Tool
	// ParamHeaders is set when the input schema may name x-mcp-header
	// parameters, which a 2026-07-28 request mirrors in Mcp-Param-*
	// headers that the go-sdk server checks.
	ParamHeaders bool
}

// Prompt is one prompt in the aggregated catalog.
type Prompt struct {
	Name, Upstream, Original string
	Def                      *mcp.Prompt
}

// Resource is one resource in the aggregated catalog; URIs are not renamed.
type Resource struct {
	Upstream string
	Def      *mcp.Resource
}

// Template is one resource template in the aggregated catalog.
type Template struct {
	Upstream string
	Def      *mcp.ResourceTemplate
}

// Catalog is an immutable snapshot of everything the upstreams offer, named
// for clients. Build a new one to change it.
type Catalog struct {
	Tools     []Tool
	Prompts   []Prompt
	Resources []Resource
	Templates []Template
	// Conflicts lists what was left out and why (name collisions, invalid
	// definitions). They are reported, never silently shadowed.
	Conflicts []string

	tools     map[string]*Tool
	prompts   map[string]*Prompt
	resources map[string]*Resource
}

// Tool returns the catalog entry for a client-visible tool name.
func (c *Catalog) Tool(name string) (*Tool, bool) {
	t, ok := c.tools[name]
	return t, ok
}

// Prompt returns the catalog entry for a client-visible prompt name.
func (c *Catalog) Prompt(name string) (*Prompt, bool) {
	p, ok := c.prompts[name]
	return p, ok
}

// ResourceUpstream returns the upstream that serves a resource URI: an exact
// resource first, then the first template whose literal prefix matches.
func (c *Catalog) ResourceUpstream(uri string) (string, bool) {
	if r, ok := c.resources[uri]; ok {
		return r.Upstream, true
	}
	best, bestLen := "", -1
	for _, t := range c.Templates {
		p := templatePrefix(t.Def.URITemplate)
		if len(p) > bestLen && len(uri) >= len(p) && uri[:len(p)] == p {
			best, bestLen = t.Upstream, len(p)
		}
	}
	return best, bestLen >= 0
}

// templatePrefix is the literal part of a URI template before its first expression.
func templatePrefix(tmpl string) string {
	for i, r := range tmpl {
		if r == '{' {
			return tmpl[:i]
		}
	}
	return tmpl
}

// listing is what one upstream offered at its last refresh.
type listing struct {
	upstream  string
	naming    Naming
	tools     []*mcp.Tool
	prompts   []*mcp.Prompt
	resources []*mcp.Resource
	templates []*mcp.ResourceTemplate
}

// buildCatalog names and merges listings, given in registration order, so
// that an earlier upstream wins a collision and the later one is reported.
func buildCatalog(ls []listing, def Naming) *Catalog {
	c := &Catalog{
		tools:     map[string]*Tool{},
		prompts:   map[string]*Prompt{},
		resources: map[string]*Resource{},
	}
	// For conditional naming: which bare names more than one upstream offers.
	toolCount, promptCount := map[string]int{}, map[string]int{}
	for _, l := range ls {
		for _, t := range l.tools {
			toolCount[t.Name]++
		}
		for _, p := range l.prompts {
			promptCount[p.Name]++
		}
	}
	for _, l := range ls {
		naming := l.naming
		if naming == "" {
			naming = def
		}
		for _, t := range l.tools {
			name := exposedName(naming, l.upstream, t.Name, toolCount[t.Name])
			schema, err := checkTool(name, t)
			if err != nil {
				c.Conflicts = append(c.Conflicts, fmt.Sprintf("tool %s from upstream %s left out: %v", t.Name, l.upstream, err))
				continue
			}
			if prev, dup := c.tools[name]; dup {
				c.Conflicts = append(c.Conflicts, fmt.Sprintf("tool %s from upstream %s left out: name already taken by upstream %s", name, l.upstream, prev.Upstream))
				continue
			}
			def := *t
			def.Name = name
			c.Tools = append(c.Tools, Tool{Name: name, Upstream: l.upstream, Original: t.Name, Def: &def,
				ParamHeaders: bytes.Contains(schema, []byte("x-mcp-header"))})
			c.tools[name] = &c.Tools[len(c.Tools)-1]
		}
		for _, p := range l.prompts {
			name := exposedName(naming, l.upstream, p.Name, promptCount[p.Name])
			if prev, dup := c.prompts[name]; dup {
				c.Conflicts = append(c.Conflicts, fmt.Sprintf("prompt %s from upstream %s left out: name already taken by upstream %s", name, l.upstream, prev.Upstream))
				continue
			}
			def := *p
			def.Name = name
			c.Prompts = append(c.Prompts, Prompt{Name: name, Upstream: l.upstream, Original: p.Name, Def: &def})
			c.prompts[name] = &c.Prompts[len(c.Prompts)-1]
		}
		for _, r := range l.resources {
			if prev, dup := c.resources[r.URI]; dup {
				c.Conflicts = append(c.Conflicts, fmt.Sprintf("resource %s from upstream %s left out: already served by upstream %s", r.URI, l.upstream, prev.Upstream))
				continue
			}
			c.Resources = append(c.Resources, Resource{Upstream: l.upstream, Def: r})
			c.resources[r.URI] = &c.Resources[len(c.Resources)-1]
		}
		for _, t := range l.templates {
			c.Templates = append(c.Templates, Template{Upstream: l.upstream, Def: t})
		}
	}
	// Pointers into the slices above stay valid: the slices are not appended to again.
	c.reindex()
	sort.Strings(c.Conflicts)
	return c
}

// reindex rebuilds the lookup maps so that they point into the final slices
// (appends may have moved the backing arrays while building).
func (c *Catalog) reindex() {
	for i := range c.Tools {
		c.tools[c.Tools[i].Name] = &c.Tools[i]
	}
	for i := range c.Prompts {
		c.prompts[c.Prompts[i].Name] = &c.Prompts[i]
	}
	for i := range c.Resources {
		c.resources[c.Resources[i].Def.URI] = &c.Resources[i]
	}
}

func exposedName(n Naming, upstream, name string, offeredBy int) string {
	switch n {
	case NamingNone:
		return name
	case NamingConditional:
		if offeredBy <= 1 {
			return name
		}
	}
	return upstream + Separator + name
}

// checkTool refuses definitions the gateway cannot serve faithfully: names
// outside the MCP tool-name alphabet and input schemas that are not
// objects. It returns the input schema's JSON.
func checkTool(name string, t *mcp.Tool) (json.RawMessage, error) {
	if !toolNameRE.MatchString(name) {
		return nil, fmt.Errorf("name %q is not 1-128 characters of [A-Za-z0-9_.-]", name)
	}
	raw, err := json.Marshal(t.InputSchema)
	if err != nil {
		return nil, fmt.Errorf("inputSchema: %v", err)
	}
	var s struct {
		Type any `json:"type"`
	}
	if err := json.Unmarshal(raw, &s); err != nil || s.Type != "object" {
		return nil, fmt.Errorf("inputSchema must be a JSON Schema of type \"object\"")
	}
	return raw, nil
}
