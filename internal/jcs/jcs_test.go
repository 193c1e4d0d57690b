package jcs

import (
	"math"
	"testing"
)

// TestTransform: RFC 8785's examples (§3.2.2, Appendix B numbers, the
// UTF-16 ordering of §3.2.3) and refusals.
func TestTransform(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		// §3.2.2 example
		{`{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001], "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/", "literals": [null, true, false]}`,
			`{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}`},
		// §3.2.3: sorting by UTF-16 code units
		{`{"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh", "1": "One", "\ud83d\ude00": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis"}`,
			"{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u0080\":\"Control\",\"\u00f6\":\"Latin Small Letter O With Diaeresis\",\"\u20ac\":\"Euro Sign\",\"\U0001F600\":\"Emoji: Grinning Face\",\"\ufb33\":\"Hebrew Letter Dalet With Dagesh\"}"},
		{`[0, -0, 1, -1, 1e21, 1e20, 0.000001, 0.0000001, 9007199254740993, 123456789012345680000, 5e-324]`,
			`[0,0,1,-1,1e+21,100000000000000000000,0.000001,1e-7,9007199254740992,123456789012345680000,5e-324]`},
		{` { "a" : { "b" : [ ] , "a" : { } } } `, `{"a":{"a":{},"b":[]}}`},
	} {
		got, err := Transform([]byte(c.in))
		if err != nil || string(got) != c.want {
			t.Errorf("Transform(%s)\n got %s, %v\nwant %s", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{``, `{`, `{} {}`, `[1e400]`, `"\xff"`} {
		if got, err := Transform([]byte(bad)); err == nil {
			t.Errorf("Transform(%q) = %s, want an error", bad, got)
		}
	}
	if _, err := Value(math.NaN()); err == nil {
		t.Error("NaN was written")
	}
}

func FuzzTransform(f *testing.F) {
	for _, s := range []string{`{"b":1,"a":[true,null,"x"]}`, `1.5e300`, `"\u0001"`, `{}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		out, err := Transform(b)
		if err != nil {
			return
		}
		// The canonical form is a fixed point.
		again, err := Transform(out)
		if err != nil || string(again) != string(out) {
			t.Fatalf("not a fixed point: %s → %s (%v)", out, again, err)
		}
	})
}
