package agui

import (
	"encoding/json"
	"strings"
	"testing"
)

// eventCases are events with the outcome zod's EventSchemas.safeParse
// (@ag-ui/core 1.0.0) gives them: want is "" for a valid event, otherwise
// what CheckEvent's error must contain. Keep one case per line, the JSON in
// backquotes: the cases were run through zod by a script that reads them
// from this file.
var eventCases = []struct {
	name string
	raw  string
	want string
}{
	{"run started", `{"type":"RUN_STARTED","threadId":"t1","runId":"r1","timestamp":1700000000000}`, ""},
	{"run started with input", `{"type":"RUN_STARTED","threadId":"t1","runId":"r1","parentRunId":"r0","protocolVersion":"1.0","input":{"threadId":"t1","runId":"r1","state":null,"messages":[{"id":"m1","role":"user","content":[{"type":"text","text":"hi"},{"type":"image","source":{"type":"url","value":"https://x/y.png"}}]}],"tools":[{"name":"f","description":"d","parameters":{"type":"object"}}],"context":[{"description":"d","value":"v"}],"forwardedProps":{"a":1},"resume":[{"interruptId":"i1","status":"resolved","payload":{"ok":true}}]}}`, ""},
	{"run started without runId", `{"type":"RUN_STARTED","threadId":"t1"}`, "AG-UI event RUN_STARTED: missing property runId"},
	{"run started input without messages", `{"type":"RUN_STARTED","threadId":"t1","runId":"r1","input":{"threadId":"t1","runId":"r1"}}`, "missing property input/messages"},
	{"run started resume status", `{"type":"RUN_STARTED","threadId":"t1","runId":"r1","input":{"threadId":"t1","runId":"r1","messages":[],"resume":[{"interruptId":"i1","status":"approved"}]}}`, "input/resume/0/status: must be one of resolved, cancelled"},
	{"run started forwardedProps null", `{"type":"RUN_STARTED","threadId":"t1","runId":"r1","input":{"threadId":"t1","runId":"r1","messages":[],"forwardedProps":null}}`, "input/forwardedProps: must not be null"},
	{"run finished", `{"type":"RUN_FINISHED","threadId":"t1","runId":"r1","result":{"answer":42}}`, ""},
	{"run finished interrupt", `{"type":"RUN_FINISHED","threadId":"t1","runId":"r1","outcome":{"type":"interrupt","interrupts":[{"id":"c_1","reason":"tool_call","message":"delete /a?","toolCallId":"tc1","responseSchema":{"type":"object"},"expiresAt":"2026-01-01T00:00:00Z","metadata":{"sag":null}}]}}`, ""},
	{"run finished success", `{"type":"RUN_FINISHED","threadId":"t1","runId":"r1","outcome":{"type":"success","pendingToolCallIds":["tc1"]},"usage":[{"provider":"openai","model":"m","inputTokens":10,"outputTokens":0}]}`, ""},
	{"run finished cancelled", `{"type":"RUN_FINISHED","threadId":"t1","runId":"r1","outcome":{"type":"cancelled","why":"extra"}}`, ""},
	{"run finished no threadId", `{"type":"RUN_FINISHED","runId":"r1"}`, "AG-UI event RUN_FINISHED: missing property threadId"},
	{"run finished no interrupts", `{"type":"RUN_FINISHED","threadId":"t1","runId":"r1","outcome":{"type":"interrupt","interrupts":[]}}`, "outcome/interrupts: must not be empty"},
	{"run finished interrupt without reason", `{"type":"RUN_FINISHED","threadId":"t1","runId":"r1","outcome":{"type":"interrupt","interrupts":[{"id":"c_1"}]}}`, "missing property outcome/interrupts/0/reason"},
	{"run finished responseSchema array", `{"type":"RUN_FINISHED","threadId":"t1","runId":"r1","outcome":{"type":"interrupt","interrupts":[{"id":"c_1","reason":"r","responseSchema":[]}]}}`, "outcome/interrupts/0/responseSchema: got array, want object"},
	{"run finished outcome type", `{"type":"RUN_FINISHED","threadId":"t1","runId":"r1","outcome":{"type":"done"}}`, "outcome/type: must be one of success, interrupt, cancelled"},
	{"run finished result null", `{"type":"RUN_FINISHED","threadId":"t1","runId":"r1","result":null}`, "result: must not be null"},
	{"run finished negative tokens", `{"type":"RUN_FINISHED","threadId":"t1","runId":"r1","usage":[{"inputTokens":-1}]}`, "usage/0/inputTokens: must be at least 0"},
	{"run error", `{"type":"RUN_ERROR","message":"boom","code":"E1"}`, ""},
	{"run error message number", `{"type":"RUN_ERROR","message":5}`, "AG-UI event RUN_ERROR: message: got number, want string"},
	{"step started", `{"type":"STEP_STARTED","stepName":"plan","subagentRunId":"s1"}`, ""},
	{"step started no name", `{"type":"STEP_STARTED"}`, "missing property stepName"},
	{"step finished", `{"type":"STEP_FINISHED","stepName":"plan"}`, ""},
	{"step finished name bool", `{"type":"STEP_FINISHED","stepName":true}`, "stepName: got boolean, want string"},
	{"text start", `{"type":"TEXT_MESSAGE_START","messageId":"m1","role":"assistant","name":"bot"}`, ""},
	{"text start role tool", `{"type":"TEXT_MESSAGE_START","messageId":"m1","role":"tool"}`, "role: must be one of developer, system, assistant, user"},
	{"text content", `{"type":"TEXT_MESSAGE_CONTENT","messageId":"m1","delta":"Hel"}`, ""},
	{"text content no delta", `{"type":"TEXT_MESSAGE_CONTENT","messageId":"m1"}`, "missing property delta"},
	{"text end", `{"type":"TEXT_MESSAGE_END","messageId":"m1"}`, ""},
	{"text end id null", `{"type":"TEXT_MESSAGE_END","messageId":null}`, "messageId: got null, want string"},
	{"text chunk", `{"type":"TEXT_MESSAGE_CHUNK"}`, ""},
	{"text chunk delta number", `{"type":"TEXT_MESSAGE_CHUNK","messageId":"m1","delta":1}`, "delta: got number, want string"},
	{"tool start", `{"type":"TOOL_CALL_START","toolCallId":"tc1","toolCallName":"delete","parentMessageId":"m1"}`, ""},
	{"tool start no name", `{"type":"TOOL_CALL_START","toolCallId":"tc1"}`, "AG-UI event TOOL_CALL_START: missing property toolCallName"},
	{"tool args", `{"type":"TOOL_CALL_ARGS","toolCallId":"tc1","delta":"{\"path\":"}`, ""},
	{"tool args delta object", `{"type":"TOOL_CALL_ARGS","toolCallId":"tc1","delta":{"path":"/a"}}`, "delta: got object, want string"},
	{"tool end", `{"type":"TOOL_CALL_END","toolCallId":"tc1"}`, ""},
	{"tool end no id", `{"type":"TOOL_CALL_END"}`, "missing property toolCallId"},
	{"tool chunk", `{"type":"TOOL_CALL_CHUNK","toolCallId":"tc1","delta":"{}"}`, ""},
	{"tool chunk parent bool", `{"type":"TOOL_CALL_CHUNK","parentMessageId":false}`, "parentMessageId: got boolean, want string"},
	{"tool result", `{"type":"TOOL_CALL_RESULT","messageId":"m2","toolCallId":"tc1","content":"done","role":"tool"}`, ""},
	{"tool result parts", `{"type":"TOOL_CALL_RESULT","messageId":"m2","toolCallId":"tc1","content":[{"type":"text","text":"see"},{"type":"document","source":{"type":"data","value":"JVBE","mimeType":"application/pdf"}},{"type":"audio","id":"a1","source":{"type":"file","value":"file-1","provider":"openai"},"metadata":[]}]}`, ""},
	{"tool result content object", `{"type":"TOOL_CALL_RESULT","messageId":"m2","toolCallId":"tc1","content":{"text":"done"}}`, "content: got object, want string or array"},
	{"tool result role", `{"type":"TOOL_CALL_RESULT","messageId":"m2","toolCallId":"tc1","content":"x","role":"assistant"}`, `role: must be "tool"`},
	{"tool result no content", `{"type":"TOOL_CALL_RESULT","messageId":"m2","toolCallId":"tc1"}`, "missing property content"},
	{"tool result data without mimeType", `{"type":"TOOL_CALL_RESULT","messageId":"m2","toolCallId":"tc1","content":[{"type":"image","source":{"type":"data","value":"AAAA"}}]}`, "missing property content/0/source/mimeType"},
	{"tool result part type", `{"type":"TOOL_CALL_RESULT","messageId":"m2","toolCallId":"tc1","content":[{"type":"html","text":"<b>"}]}`, "content/0/type: must be one of text, image, audio, video, document"},
	{"tool result part metadata null", `{"type":"TOOL_CALL_RESULT","messageId":"m2","toolCallId":"tc1","content":[{"type":"text","text":"x","metadata":null}]}`, "content/0/metadata: must not be null"},
	{"state snapshot", `{"type":"STATE_SNAPSHOT","snapshot":{"calls":[]}}`, ""},
	{"state snapshot null", `{"type":"STATE_SNAPSHOT","snapshot":null}`, ""},
	{"state snapshot missing", `{"type":"STATE_SNAPSHOT"}`, "missing property snapshot"},
	{"state delta", `{"type":"STATE_DELTA","delta":[{"op":"add","path":"/a","value":null},{"op":"remove","path":"/b","value":"leftover"},{"op":"replace","path":"","value":{}},{"op":"move","from":"/c","path":"/d"},{"op":"copy","from":"/e~1f","path":"/g~0"},{"op":"test","path":"/h/0","value":1}]}`, ""},
	{"state delta empty", `{"type":"STATE_DELTA","delta":[]}`, ""},
	{"state delta not array", `{"type":"STATE_DELTA","delta":{"op":"add"}}`, "delta: got object, want array"},
	{"state delta bad pointer", `{"type":"STATE_DELTA","delta":[{"op":"remove","path":"a/b"}]}`, "delta/0/path: not a JSON Pointer"},
	{"state delta bad escape", `{"type":"STATE_DELTA","delta":[{"op":"remove","path":"/a~2"}]}`, "delta/0/path: not a JSON Pointer"},
	{"state delta unknown op", `{"type":"STATE_DELTA","delta":[{"op":"merge","path":"/a"}]}`, "delta/0/op: must be one of add, remove, replace, move, copy, test"},
	{"state delta add without value", `{"type":"STATE_DELTA","delta":[{"op":"add","path":"/a"}]}`, "missing property delta/0/value"},
	{"state delta move without from", `{"type":"STATE_DELTA","delta":[{"op":"move","path":"/a"}]}`, "missing property delta/0/from"},
	{"messages snapshot", `{"type":"MESSAGES_SNAPSHOT","subagentRunId":5,"messages":[{"id":"1","role":"developer","content":"be brief"},{"id":"2","role":"system","content":"s","name":"sys"},{"id":"3","role":"user","content":"hi","metadata":{"k":null}},{"id":"4","role":"assistant","toolCalls":[{"id":"tc1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"id":"5","role":"tool","toolCallId":"tc1","content":[{"type":"video","source":{"type":"url","value":"https://v"}}],"error":"e"},{"id":"6","role":"activity","activityType":"progress","content":{"pct":50}},{"id":"7","role":"reasoning","content":"think","encryptedValue":"x"}]}`, ""},
	{"messages snapshot missing", `{"type":"MESSAGES_SNAPSHOT"}`, "missing property messages"},
	{"messages snapshot tool call without function", `{"type":"MESSAGES_SNAPSHOT","messages":[{"id":"4","role":"assistant","toolCalls":[{"id":"tc1","type":"function"}]}]}`, "missing property messages/0/toolCalls/0/function"},
	{"messages snapshot role", `{"type":"MESSAGES_SNAPSHOT","messages":[{"id":"1","role":"bot","content":"x"}]}`, "messages/0/role: must be one of developer, system, assistant, user, tool, activity, reasoning"},
	{"messages snapshot user without content", `{"type":"MESSAGES_SNAPSHOT","messages":[{"id":"1","role":"user"}]}`, "missing property messages/0/content"},
	{"messages snapshot activity content array", `{"type":"MESSAGES_SNAPSHOT","messages":[{"id":"6","role":"activity","activityType":"p","content":[]}]}`, "messages/0/content: got array, want object"},
	{"messages snapshot tool without toolCallId", `{"type":"MESSAGES_SNAPSHOT","messages":[{"id":"5","role":"tool","content":"r"}]}`, "missing property messages/0/toolCallId"},
	{"messages snapshot metadata null", `{"type":"MESSAGES_SNAPSHOT","messages":[{"id":"1","role":"system","content":"s","metadata":null}]}`, "messages/0/metadata: got null, want object"},
	{"activity snapshot", `{"type":"ACTIVITY_SNAPSHOT","messageId":"a1","activityType":"progress","content":{"pct":10},"replace":false}`, ""},
	{"activity snapshot content string", `{"type":"ACTIVITY_SNAPSHOT","messageId":"a1","activityType":"progress","content":"10%"}`, "content: got string, want object"},
	{"activity snapshot replace string", `{"type":"ACTIVITY_SNAPSHOT","messageId":"a1","activityType":"progress","content":{},"replace":"yes"}`, "replace: got string, want boolean"},
	{"activity delta", `{"type":"ACTIVITY_DELTA","messageId":"a1","activityType":"progress","patch":[{"op":"replace","path":"/pct","value":20}]}`, ""},
	{"activity delta no patch", `{"type":"ACTIVITY_DELTA","messageId":"a1","activityType":"progress"}`, "missing property patch"},
	{"raw", `{"type":"RAW","event":null,"source":"openai"}`, ""},
	{"raw without event", `{"type":"RAW","source":"openai"}`, "missing property event"},
	{"custom", `{"type":"CUSTOM","name":"sag.note","value":false}`, ""},
	{"custom without value", `{"type":"CUSTOM","name":"sag.note"}`, "missing property value"},
	{"custom name number", `{"type":"CUSTOM","name":3,"value":1}`, "name: got number, want string"},
	{"reasoning start", `{"type":"REASONING_START","messageId":"r1"}`, ""},
	{"reasoning start no id", `{"type":"REASONING_START"}`, "missing property messageId"},
	{"reasoning message start", `{"type":"REASONING_MESSAGE_START","messageId":"r1","role":"reasoning"}`, ""},
	{"reasoning message start role", `{"type":"REASONING_MESSAGE_START","messageId":"r1","role":"assistant"}`, `role: must be "reasoning"`},
	{"reasoning message start no role", `{"type":"REASONING_MESSAGE_START","messageId":"r1"}`, "missing property role"},
	{"reasoning message content", `{"type":"REASONING_MESSAGE_CONTENT","messageId":"r1","delta":"hmm"}`, ""},
	{"reasoning message content delta array", `{"type":"REASONING_MESSAGE_CONTENT","messageId":"r1","delta":["hmm"]}`, "delta: got array, want string"},
	{"reasoning message end", `{"type":"REASONING_MESSAGE_END","messageId":"r1"}`, ""},
	{"reasoning message end no id", `{"type":"REASONING_MESSAGE_END"}`, "missing property messageId"},
	{"reasoning message chunk", `{"type":"REASONING_MESSAGE_CHUNK","delta":"x"}`, ""},
	{"reasoning message chunk id number", `{"type":"REASONING_MESSAGE_CHUNK","messageId":7}`, "messageId: got number, want string"},
	{"reasoning end", `{"type":"REASONING_END","messageId":"r1"}`, ""},
	{"reasoning end id object", `{"type":"REASONING_END","messageId":{}}`, "messageId: got object, want string"},
	{"reasoning encrypted value", `{"type":"REASONING_ENCRYPTED_VALUE","subtype":"tool-call","entityId":"tc1","encryptedValue":"opaque"}`, ""},
	{"reasoning encrypted value subtype", `{"type":"REASONING_ENCRYPTED_VALUE","subtype":"thought","entityId":"tc1","encryptedValue":"opaque"}`, "subtype: must be one of tool-call, message"},
	{"subagent started", `{"type":"SUBAGENT_STARTED","subagentRunId":"s1","name":"researcher","parentSubagentRunId":"s0","parentToolCallId":"tc1"}`, ""},
	{"subagent started no run id", `{"type":"SUBAGENT_STARTED","name":"researcher"}`, "missing property subagentRunId"},
	{"subagent finished", `{"type":"SUBAGENT_FINISHED","subagentRunId":"s1","outcome":{"type":"suspended","interruptIds":["i1"]}}`, ""},
	{"subagent finished outcome", `{"type":"SUBAGENT_FINISHED","subagentRunId":"s1","outcome":{"type":"interrupt"}}`, "outcome/type: must be one of success, suspended"},
	{"subagent finished result null", `{"type":"SUBAGENT_FINISHED","subagentRunId":"s1","result":null}`, "result: must not be null"},
	{"subagent error", `{"type":"SUBAGENT_ERROR","subagentRunId":"s1","message":"failed","code":"E"}`, ""},
	{"subagent error no message", `{"type":"SUBAGENT_ERROR","subagentRunId":"s1"}`, "missing property message"},
	{"extra properties", `{"type":"TOOL_CALL_END","toolCallId":"tc1","x-sag":{"a":[1,2]},"toolCallName":5}`, ""},
	{"metadata with null values", `{"type":"TOOL_CALL_END","toolCallId":"tc1","metadata":{"ag-ui":null}}`, ""},
	{"metadata array", `{"type":"TOOL_CALL_END","toolCallId":"tc1","metadata":[]}`, "metadata: got array, want object"},
	{"rawEvent null", `{"type":"TOOL_CALL_END","toolCallId":"tc1","rawEvent":null}`, "rawEvent: must not be null"},
	{"rawEvent string", `{"type":"TOOL_CALL_END","toolCallId":"tc1","rawEvent":"x"}`, ""},
	{"subagentRunId number", `{"type":"TOOL_CALL_END","toolCallId":"tc1","subagentRunId":5}`, "subagentRunId: got number, want string"},
	{"timestamp fraction", `{"type":"TOOL_CALL_END","toolCallId":"tc1","timestamp":1.5}`, "timestamp: got number, want integer"},
	{"timestamp string", `{"type":"TOOL_CALL_END","toolCallId":"tc1","timestamp":"2026-01-01"}`, "timestamp: got string, want integer"},
	{"timestamp 1.0", `{"type":"TOOL_CALL_END","toolCallId":"tc1","timestamp":1.0}`, ""},
	{"timestamp exponent", `{"type":"TOOL_CALL_END","toolCallId":"tc1","timestamp":17e11}`, ""},
	{"timestamp min", `{"type":"TOOL_CALL_END","toolCallId":"tc1","timestamp":-9007199254740991}`, ""},
	{"timestamp over max", `{"type":"TOOL_CALL_END","toolCallId":"tc1","timestamp":9007199254740992}`, "timestamp: must be at most 9007199254740991"},
	{"timestamp huge", `{"type":"TOOL_CALL_END","toolCallId":"tc1","timestamp":1e400}`, "timestamp: must be at most 9007199254740991"},
	{"timestamp rounds to integer", `{"type":"TOOL_CALL_END","toolCallId":"tc1","timestamp":1.0000000000000001}`, ""},
	{"duplicate type key", `{"type":"RAW","type":"CUSTOM","name":"n","value":1}`, ""},
	{"two problems", `{"type":"TOOL_CALL_START"}`, "AG-UI event TOOL_CALL_START: missing property toolCallId (and 1 more problem)"},
	{"null", `null`, "AG-UI event: not a JSON object"},
	{"array", `[]`, "AG-UI event: not a JSON object"},
	{"string", `"x"`, "AG-UI event: not a JSON object"},
	{"number", `1`, "AG-UI event: not a JSON object"},
	{"empty object", `{}`, "AG-UI event: missing property type"},
	{"type number", `{"type":5}`, "AG-UI event: type is not a string"},
	{"unknown type", `{"type":"TEXT_MESSAGE"}`, `AG-UI event: unknown type "TEXT_MESSAGE"`},
	{"unknown type lowercase", `{"type":"run_started","threadId":"t","runId":"r"}`, `AG-UI event: unknown type "run_started"`},
	{"unknown type escaped", `{"type":"\u202eevil\n"}`, `AG-UI event: unknown type "\u202eevil\n"`},
	{"empty", ``, "AG-UI event: not valid JSON"},
	{"truncated", `{"type":"RAW"`, "AG-UI event: not valid JSON"},
	{"trailing data", `{"type":"RAW","event":1} {}`, "AG-UI event: not valid JSON"},
}

// bigEvents are generated cases: the size limit, and numbers long enough to
// be slow for the validator's exact arithmetic.
func bigEvents() []struct{ name, raw, want string } {
	return []struct{ name, raw, want string }{
		{"over 1 MiB", `{"type":"RAW","event":"` + strings.Repeat("a", 1<<20) + `"}`, "AG-UI event: larger than 1 MiB"},
		{"long timestamp", `{"type":"RAW","event":1,"timestamp":` + strings.Repeat("7", 1<<20-100) + `}`, "timestamp: must be at most 9007199254740991"},
		{"long fraction", `{"type":"RAW","event":1,"timestamp":0.` + strings.Repeat("7", 1<<20-100) + `}`, "timestamp: got number, want integer"},
		{"long type", `{"type":"` + strings.Repeat("X", 1000) + `"}`, `unknown type "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX..."`},
		{"deep", strings.Repeat("[", 20000) + strings.Repeat("]", 20000), "AG-UI event: not valid JSON"},
		{"deep in state", `{"type":"STATE_SNAPSHOT","snapshot":` + strings.Repeat("[", 5000) + strings.Repeat("]", 5000) + `}`, ""},
	}
}

func TestCheckEvent(t *testing.T) {
	all := append([]struct{ name, raw, want string }{}, bigEvents()...)
	for _, c := range eventCases {
		all = append(all, struct{ name, raw, want string }{c.name, c.raw, c.want})
	}
	for _, c := range all {
		t.Run(c.name, func(t *testing.T) {
			err := CheckEvent([]byte(c.raw))
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("CheckEvent: %v, want nil", err)
			case c.want != "" && err == nil:
				t.Fatalf("CheckEvent: nil, want error containing %q", c.want)
			case err != nil && !strings.Contains(err.Error(), c.want):
				t.Fatalf("CheckEvent: %q, want it to contain %q", err, c.want)
			case err != nil && !strings.HasPrefix(err.Error(), "AG-UI event"):
				t.Fatalf("CheckEvent: %q, want the AG-UI event prefix", err)
			}
		})
	}
}

// TestEventSchemaCoverage checks that the schema compiles, that it has a
// branch for every event type, and that eventCases have a valid and an
// invalid event of each type.
func TestEventSchemaCoverage(t *testing.T) {
	if _, err := eventSchema(); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		AllOf []struct {
			If struct {
				Properties struct {
					Type struct {
						Const string `json:"const"`
					} `json:"type"`
				} `json:"properties"`
			} `json:"if"`
		} `json:"allOf"`
	}
	if err := json.Unmarshal(eventSchemaJSON, &doc); err != nil {
		t.Fatal(err)
	}
	branches := map[string]bool{}
	for _, b := range doc.AllOf {
		branches[b.If.Properties.Type.Const] = true
	}
	types := eventTypes()
	if len(types) != 31 {
		t.Errorf("%d event types, want the 31 of AG-UI 1.0", len(types))
	}
	valid, invalid := map[string]bool{}, map[string]bool{}
	for _, c := range eventCases {
		var head struct {
			Type string `json:"type"`
		}
		if json.Unmarshal([]byte(c.raw), &head) != nil || !types[head.Type] {
			continue
		}
		if c.want == "" {
			valid[head.Type] = true
		} else {
			invalid[head.Type] = true
		}
	}
	for typ := range types {
		if !branches[typ] {
			t.Errorf("schema has no branch for %s", typ)
		}
		if !valid[typ] || !invalid[typ] {
			t.Errorf("%s: valid example %v, invalid example %v; want both", typ, valid[typ], invalid[typ])
		}
	}
	if len(branches) != len(types) {
		t.Errorf("%d branches for %d types", len(branches), len(types))
	}
}

func FuzzCheckEvent(f *testing.F) {
	for _, c := range eventCases {
		f.Add([]byte(c.raw))
	}
	f.Add([]byte(`{"type":"RAW","event":1,"timestamp":` + strings.Repeat("9", 400) + `}`))
	f.Add([]byte(`{"type":"STATE_DELTA","delta":[{"op":"add","path":"/\u00e9~1","value":[1e-400]}]}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		err := CheckEvent(raw)
		if err == nil {
			var obj map[string]any
			if json.Unmarshal(raw, &obj) != nil {
				t.Fatalf("CheckEvent accepted %q", raw)
			}
			if typ, _ := obj["type"].(string); !eventTypes()[typ] {
				t.Fatalf("CheckEvent accepted %q", raw)
			}
			return
		}
		msg := err.Error()
		if strings.Contains(msg, "internal validator error") || strings.Contains(msg, "schema unavailable") {
			t.Fatalf("CheckEvent(%q): %v", raw, err)
		}
		if !strings.HasPrefix(msg, "AG-UI event") || len(msg) > 300 {
			t.Fatalf("CheckEvent(%q): unexpected message %q", raw, msg)
		}
	})
}
