// Command sag is the Session-Aware Agent Gateway: one MCP endpoint in front
// of many upstream MCP servers.
//
//	sag serve     run the gateway
//	sag demo      run the gateway in front of two fixture upstreams
//	sag tools     list a gateway's tools (a minimal MCP client)
//	sag call      call a tool through a gateway
//	sag token     print an access token from the gateway's development issuer
//	sag upstreams add|list|remove   manage upstreams through the admin API
//	sag kill      revoke a session and everything hanging off it
//	sag keys rotate   start signing with a new key (the old one stays published)
//	sag audit     print recent audit records as JSON lines
//	sag bench     measure the gateway's added latency and throughput
//	sag version   print the version
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const usage = `usage: sag <command> [flags]

commands:
  serve       run the gateway (no flags: loopback, SQLite in ./sag-data)
  demo        run the gateway in front of two fixture upstreams
  tools       list the tools a gateway offers
  call        call a tool through a gateway
  token       print an access token from the gateway's development issuer
  hash-password  print an argon2id hash of a password read from stdin (local users)
  upstreams   add, list or remove upstreams (admin API)
  kill        revoke a session, a user or an agent, and all that hangs off it
  risk        clear a session's risk score (risk clear ID)
  keys        rotate the gateway's signing key (keys rotate)
  audit       print recent audit records as JSON lines
  bench       measure added latency and throughput
  version     print the version

Run 'sag <command> -h' for a command's flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmds := map[string]func([]string) error{
		"serve":         cmdServe,
		"demo":          cmdDemo,
		"tools":         cmdTools,
		"call":          cmdCall,
		"agent":         cmdAgent,
		"token":         cmdToken,
		"hash-password": cmdHashPassword,
		"upstreams":     cmdUpstreams,
		"kill":          cmdKill,
		"risk":          cmdRisk,
		"keys":          cmdKeys,
		"audit":         cmdAudit,
		"bench":         cmdBench,

		"version": func([]string) error {
			fmt.Println("sag", version)
			return nil
		},
	}
	name := os.Args[1]
	if name == "-h" || name == "--help" || name == "help" {
		fmt.Print(usage)
		return
	}
	cmd, ok := cmds[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "sag: unknown command %q\n\n%s", name, usage)
		os.Exit(2)
	}
	if err := cmd(os.Args[2:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "sag "+name+":", err)
		os.Exit(1)
	}
}
