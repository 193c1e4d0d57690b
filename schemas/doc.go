// Package schemas owns JSON Schema for SAG: compiling schemas with
// github.com/santhosh-tekuri/jsonschema/v6 (draft 2020-12 unless a schema's
// $schema names another draft), caching compiled schemas by content,
// validating decoded JSON values and reporting the leaf problems with their
// instance locations, and the JSON Schema of SAG's configuration file
// (config.schema.json, embedded).
//
// It validates only. It must not import other SAG packages, and compiling a
// schema must never reach the network or the filesystem: every $ref outside
// the schema document itself (apart from the standard metaschemas, which the
// library embeds) is refused.
package schemas
