// Command openim-conformance replays callback cases the way OpenIM (main 7848d7c and
// v3.8.3-patch.16) sends them and applies the replies, and prints what OpenIM ends up doing.
//
//	openim-conformance < cases.json > outcomes.json
//	openim-conformance -list            # commands per line
//
// cases.json: [{"id","line":"main"|"v3.8","command","url","operationID","input":{...}}, ...]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"scriptgate/conformance/openim"
)

func main() {
	list := flag.Bool("list", false, "print the commands each OpenIM line sends, as JSON")
	flag.Parse()
	cmds := openim.ByName()
	if *list {
		lines := map[string][]string{openim.LineMain: {}, openim.LineV38: {}}
		for _, c := range openim.Commands() {
			lines[openim.LineMain] = append(lines[openim.LineMain], c.Name)
			if !c.MainOnly {
				lines[openim.LineV38] = append(lines[openim.LineV38], c.Name)
			}
		}
		_ = json.NewEncoder(os.Stdout).Encode(lines)
		return
	}
	var cases []openim.Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		fmt.Fprintln(os.Stderr, "openim-conformance: reading cases:", err)
		os.Exit(2)
	}
	outcomes := make([]openim.Outcome, 0, len(cases))
	for _, c := range cases {
		outcomes = append(outcomes, openim.Run(c, cmds))
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(outcomes); err != nil {
		fmt.Fprintln(os.Stderr, "openim-conformance:", err)
		os.Exit(2)
	}
}
