package openim

// Running one case: build OpenIM's internal object, post the callback as OpenIM does, apply
// the reply as OpenIM does, and report the outcome OpenIM reaches.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
)

type Case struct {
	ID          string          `json:"id"`
	Line        string          `json:"line"` // "main" or "v3.8"
	Command     string          `json:"command"`
	URL         string          `json:"url"` // webhooks.yml url:, as configured
	OperationID string          `json:"operationID"`
	Input       json.RawMessage `json:"input"` // overlaid on the command's default state
}

type ActionError struct {
	Code int    `json:"code"`
	Msg  string `json:"msg"`
}

type Outcome struct {
	ID           string         `json:"id"`
	Line         string         `json:"line"`
	Command      string         `json:"command"`
	Sent         bool           `json:"sent"` // false: this OpenIM line never sends it for this input
	URL          string         `json:"url,omitempty"`
	Request      string         `json:"request,omitempty"`
	Reply        string         `json:"reply,omitempty"`
	Rejected     bool           `json:"rejected"`
	ErrCode      int            `json:"errCode"`
	ErrMsg       string         `json:"errMsg"`
	ErrDlt       string         `json:"errDlt"`
	DecodeError  string         `json:"decode_error"`  // ErrData 90007: the action fails
	NetworkError string         `json:"network_error"` // ErrNetwork 90004: the action fails
	ActionError  *ActionError   `json:"action_error"`  // accepted reply, action refused afterwards
	Crash        string         `json:"crash"`         // nil dereference etc.: the RPC panics (500)
	AfterIgnored string         `json:"after_ignored"` // after callbacks: the error OpenIM drops
	Applied      map[string]any `json:"applied"`       // what the reply changed in OpenIM's object
}

func ByName() map[string]*Command {
	m := map[string]*Command{}
	for _, c := range Commands() {
		m[c.Name] = c
	}
	return m
}

type snapshotter interface{ Snapshot() any }

func snapshot(state any) (map[string]any, error) {
	var v any = state
	if s, ok := state.(snapshotter); ok {
		v = s.Snapshot()
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	return m, nil
}

// diff lists the leaves that changed, by dotted path. An object that appears where there was
// none is listed leaf by leaf; lists are compared whole.
func diff(prefix string, before, after map[string]any, out map[string]any) {
	for k, nv := range after {
		ov, had := before[k]
		path := prefix + k
		nm, newIsMap := nv.(map[string]any)
		om, oldIsMap := ov.(map[string]any)
		switch {
		case newIsMap && oldIsMap:
			diff(path+".", om, nm, out)
		case newIsMap && (!had || ov == nil):
			diff(path+".", map[string]any{}, nm, out)
		case !had || !reflect.DeepEqual(ov, nv):
			out[path] = nv
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			out[prefix+k] = nil
		}
	}
}

func overlay(state any, docs string) error {
	dec := json.NewDecoder(strings.NewReader(docs))
	for {
		if err := dec.Decode(state); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}

func Run(c Case, cmds map[string]*Command) (out Outcome) {
	out = Outcome{ID: c.ID, Line: c.Line, Command: c.Command, Applied: map[string]any{}}
	cmd, ok := cmds[c.Command]
	if !ok {
		out.Crash = "harness: unknown command " + c.Command
		return out
	}
	if cmd.MainOnly && c.Line == LineV38 {
		return out // the release line has no such callback
	}
	state := cmd.State()
	if err := overlay(state, cmd.Default); err != nil {
		out.Crash = "harness: default state: " + err.Error()
		return out
	}
	if len(c.Input) > 0 {
		if err := overlay(state, string(c.Input)); err != nil {
			out.Crash = "harness: case input: " + err.Error()
			return out
		}
	}
	before, err := snapshot(state)
	if err != nil {
		out.Crash = "harness: " + err.Error()
		return out
	}
	client := NewClient(c.URL)
	client.OperationID = c.OperationID
	x := &Exec{C: client, Line: c.Line, Timeout: 5}
	var runErr error
	func() {
		defer func() {
			if r := recover(); r != nil {
				out.Crash = fmt.Sprint(r)
			}
		}()
		runErr = cmd.Run(x, state)
	}()
	if errors.Is(runErr, errNotSent) {
		return out
	}
	out.Sent = true
	out.URL = client.Last.URL
	out.Request = string(client.Last.Body)
	out.Reply = string(client.Last.Reply)
	if x.AfterErr != nil {
		out.AfterIgnored = x.AfterErr.Error()
	}
	var codeErr *CodeError
	var netErr *NetworkError
	var dataErr *DataError
	var argsErr *ArgsError
	switch {
	case runErr == nil:
	case errors.As(runErr, &codeErr):
		out.Rejected, out.ErrCode, out.ErrMsg, out.ErrDlt = true, codeErr.Code, codeErr.Msg, codeErr.Detail
	case errors.As(runErr, &netErr):
		out.NetworkError = netErr.Error()
	case errors.As(runErr, &dataErr):
		out.DecodeError = dataErr.Error()
	case errors.As(runErr, &argsErr):
		out.ActionError = &ActionError{Code: 1001, Msg: argsErr.Msg}
	default:
		out.ActionError = &ActionError{Code: 500, Msg: runErr.Error()}
	}
	if out.Crash != "" || runErr != nil {
		return out // the action failed: nothing OpenIM changed is kept
	}
	after, err := snapshot(state)
	if err != nil {
		out.Crash = "harness: " + err.Error()
		return out
	}
	diff("", before, after, out.Applied)
	return out
}
