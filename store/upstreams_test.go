package store

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestUpstreams(t *testing.T) {
	ctx := context.Background()
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	clock := newTestClock()
	s := openTest(t, Options{Now: clock.Now})

	if got, err := s.ListUpstreams(ctx); err != nil || len(got) != 0 {
		t.Fatalf("ListUpstreams on empty store = %v, %v; want none", got, err)
	}

	steps := []struct {
		name string
		do   func() error
		err  error
		want []Upstream // registry afterwards; nil means unchanged check skipped
	}{
		{
			name: "insert with options",
			do: func() error {
				return s.PutUpstream(ctx, Upstream{Name: "github", URL: "https://gh.example/mcp", Prefix: "always",
					Options: json.RawMessage(`{"timeout":"5s"}`), Created: t0.Add(time.Hour)})
			},
			want: []Upstream{{Name: "github", URL: "https://gh.example/mcp", Prefix: "always", Options: json.RawMessage(`{"timeout":"5s"}`), Created: t0.Add(time.Hour)}},
		},
		{
			name: "insert earlier, nil options",
			do: func() error {
				return s.PutUpstream(ctx, Upstream{Name: "jira", URL: "https://jira.example/mcp", Created: t0})
			},
			want: []Upstream{
				{Name: "jira", URL: "https://jira.example/mcp", Created: t0},
				{Name: "github", URL: "https://gh.example/mcp", Prefix: "always", Options: json.RawMessage(`{"timeout":"5s"}`), Created: t0.Add(time.Hour)},
			},
		},
		{
			name: "same created time orders by name",
			do: func() error {
				return s.PutUpstream(ctx, Upstream{Name: "docs", URL: "stdio:docs", Prefix: "none", Created: t0})
			},
			want: []Upstream{
				{Name: "docs", URL: "stdio:docs", Prefix: "none", Created: t0},
				{Name: "jira", URL: "https://jira.example/mcp", Created: t0},
				{Name: "github", URL: "https://gh.example/mcp", Prefix: "always", Options: json.RawMessage(`{"timeout":"5s"}`), Created: t0.Add(time.Hour)},
			},
		},
		{
			name: "replace keeps registration time",
			do: func() error {
				return s.PutUpstream(ctx, Upstream{Name: "github", URL: "https://gh2.example/mcp", Prefix: "conditional", Created: t0.Add(48 * time.Hour)})
			},
			want: []Upstream{
				{Name: "docs", URL: "stdio:docs", Prefix: "none", Created: t0},
				{Name: "jira", URL: "https://jira.example/mcp", Created: t0},
				{Name: "github", URL: "https://gh2.example/mcp", Prefix: "conditional", Created: t0.Add(time.Hour)},
			},
		},
		{
			name: "zero created comes from the clock",
			do:   func() error { return s.PutUpstream(ctx, Upstream{Name: "later", URL: "https://l.example"}) },
			want: []Upstream{
				{Name: "docs", URL: "stdio:docs", Prefix: "none", Created: t0},
				{Name: "jira", URL: "https://jira.example/mcp", Created: t0},
				{Name: "github", URL: "https://gh2.example/mcp", Prefix: "conditional", Created: t0.Add(time.Hour)},
				{Name: "later", URL: "https://l.example", Created: clockBase.Add(2 * time.Second)}, // reading 1 was Open's
			},
		},
		{name: "empty name", do: func() error { return s.PutUpstream(ctx, Upstream{URL: "x"}) }, err: errAny},
		{name: "bad prefix", do: func() error { return s.PutUpstream(ctx, Upstream{Name: "x", Prefix: "sometimes"}) }, err: errAny},
		{name: "delete unknown", do: func() error { return s.DeleteUpstream(ctx, "nope") }, err: ErrNotFound},
		{
			name: "delete",
			do:   func() error { return s.DeleteUpstream(ctx, "jira") },
			want: []Upstream{
				{Name: "docs", URL: "stdio:docs", Prefix: "none", Created: t0},
				{Name: "github", URL: "https://gh2.example/mcp", Prefix: "conditional", Created: t0.Add(time.Hour)},
				{Name: "later", URL: "https://l.example", Created: clockBase.Add(2 * time.Second)},
			},
		},
		{name: "delete twice", do: func() error { return s.DeleteUpstream(ctx, "jira") }, err: ErrNotFound},
	}
	for _, st := range steps {
		err := st.do()
		if st.err != nil {
			if err == nil || (st.err != errAny && !errors.Is(err, st.err)) {
				t.Fatalf("%s: err = %v, want %v", st.name, err, st.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		got, err := s.ListUpstreams(ctx)
		if err != nil {
			t.Fatalf("%s: ListUpstreams: %v", st.name, err)
		}
		if !reflect.DeepEqual(got, st.want) {
			t.Errorf("%s: ListUpstreams =\n %+v\nwant\n %+v", st.name, got, st.want)
		}
	}
}

func TestUpstreamsSurviveRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := Upstream{Name: "github", URL: "https://gh.example/mcp", Options: json.RawMessage(`[]`), Created: time.Unix(1, 2).UTC()}
	if err := s.PutUpstream(ctx, want); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.ListUpstreams(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, []Upstream{want}) {
		t.Errorf("after restart ListUpstreams = %+v, want %+v", got, want)
	}
}
