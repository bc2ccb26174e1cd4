package openim

// The mirror's own behaviour, against a stub receiver: what OpenIM puts on the wire and how it
// reads replies (PROTOCOL.md §2-§3), independent of ScriptGate.

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

type seen struct {
	path, rawQuery string
	header         http.Header
	body           string
}

func stub(t *testing.T, reply string) (*httptest.Server, *seen) {
	t.Helper()
	s := &seen{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		*s = seen{path: r.URL.Path, rawQuery: r.URL.RawQuery, header: r.Header.Clone(), body: string(b)}
		w.WriteHeader(http.StatusInternalServerError) // OpenIM never looks at the status
		_, _ = w.Write([]byte(reply))
	}))
	t.Cleanup(srv.Close)
	return srv, s
}

func run(t *testing.T, url, line, command, input string) Outcome {
	t.Helper()
	return Run(Case{ID: "t", Line: line, Command: command, URL: url, OperationID: "op-7", Input: json.RawMessage(input)}, ByName())
}

func TestWireFormat(t *testing.T) {
	srv, s := stub(t, `{}`)
	out := run(t, srv.URL+"/cb", LineMain, "callbackBeforeInviteJoinGroupCommand", `{"reason":"<a&b>"}`)
	if !out.Sent || out.Rejected || out.DecodeError != "" {
		t.Fatalf("outcome %+v", out)
	}
	if s.path != "/cb/callbackBeforeInviteJoinGroupCommand" || s.rawQuery != "" {
		t.Fatalf("path %q query %q", s.path, s.rawQuery)
	}
	if s.header.Get("Content-Type") != "application/json; charset=utf-8" || s.header.Get("Operationid") != "op-7" ||
		!strings.HasPrefix(s.header.Get("User-Agent"), "Go-http-client/") {
		t.Fatalf("headers %v", s.header)
	}
	if !strings.HasSuffix(s.body, "}\n") || !strings.Contains(s.body, `"reason":"\u003ca\u0026b\u003e"`) {
		t.Fatalf("body %q", s.body)
	}
}

func TestQueryStringInURL(t *testing.T) {
	srv, s := stub(t, `{}`)
	run(t, srv.URL+"/cb?contenttype=json", LineMain, "callbackBeforeJoinGroupCommand", `{}`)
	if s.path != "/cb" || s.rawQuery != "contenttype=json/callbackBeforeJoinGroupCommand" {
		t.Fatalf("path %q query %q", s.path, s.rawQuery)
	}
	run(t, srv.URL+"/cb?contenttype=json", LineMain, "callbackAfterSendSingleMsgCommand", `{}`)
	if s.path != "/cb" || !strings.HasPrefix(s.rawQuery, "contenttype=json%2FcallbackAfterSendSingleMsgCommand&key=") {
		t.Fatalf("main after-message: path %q query %q", s.path, s.rawQuery)
	}
	run(t, srv.URL+"/cb", LineV38, "callbackAfterSendSingleMsgCommand", `{}`)
	if s.path != "/cb/callbackAfterSendSingleMsgCommand" || s.rawQuery != "" {
		t.Fatalf("v3.8 after-message: path %q query %q", s.path, s.rawQuery)
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		reply    string
		rejected bool
		decode   bool
	}{
		{`{}`, false, false},
		{`null`, false, false},
		{`{"actionCode":1,"nextCode":1,"errCode":5001}`, false, false},
		{`{"actionCode":0,"nextCode":1,"errCode":5001,"errMsg":"m","errDlt":"d"}`, true, false},
		{`{"errCode":5001,"nextCode":0}`, false, false},
		{`{"errCode":"5001","nextCode":1}`, false, true},
		{`{"errCode":2147483648,"nextCode":1}`, false, true},
		{`{"NEXTCODE":1,"errcode":7}`, true, false}, // keys match case-insensitively
		{`not json`, false, true},
	} {
		srv, _ := stub(t, tc.reply)
		out := run(t, srv.URL, LineMain, "callbackBeforeAddFriendCommand", `{}`)
		if out.Rejected != tc.rejected || (out.DecodeError != "") != tc.decode {
			t.Errorf("reply %s: outcome %+v", tc.reply, out)
		}
	}
}

func TestApplyAndTraps(t *testing.T) {
	srv, _ := stub(t, `{"nickname":"x","roleLevel":60}`)
	out := run(t, srv.URL, LineMain, "callbackBeforeSetGroupMemberInfoCommand", `{}`)
	if len(out.Applied) != 2 || out.Applied["nickName"] != "x" || out.Applied["roleLevel"].(json.Number) != "60" {
		t.Fatalf("applied %v", out.Applied)
	}
	srv, _ = stub(t, `{"nickName":"x"}`)
	if out := run(t, srv.URL, LineV38, "callbackBeforeUpdateUserInfoExCommand", `{"nickName":null}`); out.Crash == "" {
		t.Fatalf("expected the nil dereference, got %+v", out)
	}
	srv, _ = stub(t, `{"offlinePushInfo":{"title":"t"}}`)
	if out := run(t, srv.URL, LineMain, "callbackBeforeMsgModifyCommand", `{"offlinePushInfo":null}`); out.Crash == "" {
		t.Fatalf("expected the nil dereference, got %+v", out)
	}
	srv, _ = stub(t, `{"memberCallbackList":[{"nickname":"x"}]}`)
	if out := run(t, srv.URL, LineMain, "callbackBeforeMembersJoinGroupCommand", `{}`); out.Crash == "" {
		t.Fatalf("expected the nil dereference, got %+v", out)
	}
	srv, _ = stub(t, `{"content":"plain"}`)
	if out := run(t, srv.URL, LineMain, "callbackBeforeMsgModifyCommand", `{}`); out.ActionError == nil || out.ActionError.Code != 1001 {
		t.Fatalf("main: expected ArgsError, got %+v", out)
	}
	if out := run(t, srv.URL, LineV38, "callbackBeforeMsgModifyCommand", `{}`); out.Applied["content"] != "plain" {
		t.Fatalf("v3.8 stores any content, got %+v", out)
	}
	srv, _ = stub(t, `{"groupID":"g1"}`) // setGroupInfoEx: every field not echoed is dropped
	out = run(t, srv.URL, LineMain, "callbackBeforeSetGroupInfoExCommand", `{}`)
	if out.Applied["groupName"] != nil || len(out.Applied) != 7 {
		t.Fatalf("applied %v", out.Applied)
	}
}

func TestLines(t *testing.T) {
	srv, _ := stub(t, `{}`)
	if out := run(t, srv.URL, LineV38, "callbackAfterMsgSaveDBCommand", `{}`); out.Sent {
		t.Fatal("v3.8 has no afterMsgSaveDB")
	}
	if out := run(t, srv.URL, LineV38, "callbackBeforeMsgModifyCommand", `{"contentType":102}`); out.Sent {
		t.Fatal("v3.8 sends msgModify for Text only")
	}
	if out := run(t, srv.URL, LineMain, "callbackBeforeSendGroupMsgCommand", `{"contentType":1400}`); out.Sent {
		t.Fatal("main skips notifications")
	}
	if n := len(Commands()); n != 52 {
		t.Fatalf("%d commands", n)
	}
}
