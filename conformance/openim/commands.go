package openim

// Each command as OpenIM sends it and applies its reply: internal/rpc/{msg,group,user,
// relation,conversation}/callback.go, internal/push/callback.go, internal/msggateway/callback.go
// and internal/msgtransfer/callback.go at 7848d7c, with the v3.8.3-patch.16 differences
// (Line == LineV38) noted where they apply.

import (
	"encoding/base64"
	"encoding/json"
	"time"
)

const (
	LineMain = "main"
	LineV38  = "v3.8"

	ContentText   = 101
	ContentTyping = 113
)

// Exec carries one call: the client (URL, operationID) and the OpenIM line being mirrored.
type Exec struct {
	C       *Client
	Line    string
	Timeout int
	// AfterErr is what an after callback's post returned; OpenIM drops it (AsyncPost).
	AfterErr error
}

type Command struct {
	Name     string
	After    bool
	MainOnly bool // absent from v3.8.3-patch (conversation callbacks, afterMsgSaveDB)
	State    func() any
	Default  string // JSON overlaid on State() before the case's own input
	Run      func(x *Exec, state any) error
}

// ArgsError is errs.ErrArgs (1001): the reply was accepted but OpenIM then refused the action.
type ArgsError struct{ Msg string }

func (e *ArgsError) Error() string { return "ArgsError: " + e.Msg }

// NotNilReplace is tools utils/datautil.NotNilReplace: *dst = *src when src is not nil. A nil
// dst with a non-nil src is the nil dereference OpenIM panics on.
func NotNilReplace[V any](dst *V, src *V) {
	if src == nil {
		return
	}
	*dst = *src
}

// post is SyncPost for before callbacks and AsyncPost(WithQuery) for after ones (run inline
// here; OpenIM queues it and ignores the outcome).
func (x *Exec) post(command string, after bool, req any, resp CallbackResp, query map[string]string) error {
	var err error
	if query != nil {
		err = x.C.PostWithQuery(command, req, resp, x.Timeout, query)
	} else {
		err = x.C.Post(command, req, resp, x.Timeout)
	}
	if after {
		x.AfterErr = err
		return nil
	}
	return err
}

var platformNames = map[int]string{1: "IOS", 2: "Android", 3: "Windows", 4: "OSX", 5: "Web", 6: "MiniWebApp", 7: "Linux", 8: "AndroidPad", 9: "IPad", 10: "Admin"}

// toCommonCallback mirrors msg/callback.go toCommonCallback (content is already text here).
func toCommonCallback(x *Exec, m *MsgState, command string) CommonCallbackReq {
	return CommonCallbackReq{
		SendID:           m.SendID,
		ServerMsgID:      m.ServerMsgID,
		CallbackCommand:  command,
		ClientMsgID:      m.ClientMsgID,
		OperationID:      x.C.OperationID,
		SenderPlatformID: m.SenderPlatformID,
		SenderNickname:   m.SenderNickname,
		SessionType:      m.SessionType,
		MsgFrom:          m.MsgFrom,
		ContentType:      m.ContentType,
		Status:           m.Status,
		SendTime:         m.SendTime,
		CreateTime:       m.CreateTime,
		AtUserIDList:     m.AtUserIDList,
		SenderFaceURL:    m.SenderFaceURL,
		Content:          m.Content,
		Seq:              uint32(m.Seq),
		Ex:               m.Ex,
	}
}

// passesFilter is filterBeforeMsg/filterAfterMsg (internal/rpc/msg/filter.go) with an empty
// webhooks.yml filter config plus the callbacks' own typing check: main skips notification
// types (1000..5000) and typing; v3.8.3-patch skips only typing.
func passesFilter(x *Exec, m *MsgState) bool {
	if m.ContentType == ContentTyping {
		return false
	}
	return x.Line != LineMain || m.ContentType < 1000 || m.ContentType > 5000
}

// buildKeyMsgDataQuery: main's ?key=base64(JSON{sendID,recvID,groupID}) on after-message callbacks.
func buildKeyMsgDataQuery(m *MsgState) map[string]string {
	b, _ := json.Marshal(KeyMsgData{SendID: m.SendID, RecvID: m.RecvID, GroupID: m.GroupID})
	return map[string]string{"key": base64.StdEncoding.EncodeToString(b)}
}

const msgDefault = `{"sendID":"u1","recvID":"u2","groupID":"","clientMsgID":"cm-1","serverMsgID":"sm-1",
"senderPlatformID":1,"senderNickname":"Alice","senderFaceURL":"http://f/a.png","sessionType":1,"msgFrom":100,
"contentType":101,"content":"{\"content\":\"hello\"}","seq":0,"sendTime":1700000000000,"createTime":1700000000000,
"status":1,"options":{"history":true},"offlinePushInfo":{"title":"t0","desc":"d0","ex":"e0","iOSPushSound":"s0",
"iOSBadgeCount":false,"signalInfo":"si0"},"atUserIDList":["u3"],"attachedInfo":"a0","ex":"x0"}`

const groupMsgDefault = `{"recvID":"","groupID":"g1","sessionType":3}`

func msgSingle(name string, after bool) *Command {
	return &Command{Name: name, After: after, State: func() any { return &MsgState{} }, Default: msgDefault,
		Run: func(x *Exec, s any) error {
			m := s.(*MsgState)
			if !passesFilter(x, m) {
				return errNotSent
			}
			req := &CallbackBeforeSendSingleMsgReq{CommonCallbackReq: toCommonCallback(x, m, name), RecvID: m.RecvID}
			if after {
				var query map[string]string
				if x.Line == LineMain {
					query = buildKeyMsgDataQuery(m)
				}
				return x.post(name, true, req, &CommonCallbackResp{}, query)
			}
			return x.post(name, false, req, &CommonCallbackResp{}, nil)
		}}
}

func msgGroup(name string, after bool) *Command {
	c := msgSingle(name, after)
	c.Default = msgDefault + "\n" + groupMsgDefault
	c.Run = func(x *Exec, s any) error {
		m := s.(*MsgState)
		if !passesFilter(x, m) {
			return errNotSent
		}
		req := &CallbackBeforeSendGroupMsgReq{CommonCallbackReq: toCommonCallback(x, m, name), GroupID: m.GroupID}
		var query map[string]string
		if after && x.Line == LineMain {
			query = buildKeyMsgDataQuery(m)
		}
		return x.post(name, after, req, &CommonCallbackResp{}, query)
	}
	return c
}

func msgModify() *Command {
	const name = "callbackBeforeMsgModifyCommand"
	return &Command{Name: name, State: func() any { return &MsgState{} }, Default: msgDefault,
		Run: func(x *Exec, s any) error {
			m := s.(*MsgState)
			if x.Line == LineV38 && m.ContentType != ContentText {
				return errNotSent // v3.8.3-patch: Text messages only
			}
			if !passesFilter(x, m) {
				return errNotSent
			}
			req := &CallbackMsgModifyCommandReq{CommonCallbackReq: toCommonCallback(x, m, name)}
			resp := &CallbackMsgModifyCommandResp{}
			if err := x.post(name, false, req, resp, nil); err != nil {
				return err
			}
			if resp.Content != nil {
				m.Content = *resp.Content
				if x.Line == LineMain { // main validates; v3.8.3-patch stores whatever came
					if err := json.Unmarshal([]byte(m.Content), &struct{}{}); err != nil {
						return &ArgsError{Msg: "webhook msg modify content is not json"}
					}
				}
			}
			NotNilReplace(m.OfflinePushInfo, resp.OfflinePushInfo)
			NotNilReplace(&m.RecvID, resp.RecvID)
			NotNilReplace(&m.GroupID, resp.GroupID)
			NotNilReplace(&m.ClientMsgID, resp.ClientMsgID)
			NotNilReplace(&m.ServerMsgID, resp.ServerMsgID)
			NotNilReplace(&m.SenderPlatformID, resp.SenderPlatformID)
			NotNilReplace(&m.SenderNickname, resp.SenderNickname)
			NotNilReplace(&m.SenderFaceURL, resp.SenderFaceURL)
			NotNilReplace(&m.SessionType, resp.SessionType)
			NotNilReplace(&m.MsgFrom, resp.MsgFrom)
			NotNilReplace(&m.ContentType, resp.ContentType)
			NotNilReplace(&m.Status, resp.Status)
			NotNilReplace(&m.Options, resp.Options)
			NotNilReplace(&m.AtUserIDList, resp.AtUserIDList)
			NotNilReplace(&m.AttachedInfo, resp.AttachedInfo)
			NotNilReplace(&m.Ex, resp.Ex)
			return nil
		}}
}

func msgSaveDB() *Command {
	const name = "callbackAfterMsgSaveDBCommand"
	return &Command{Name: name, After: true, MainOnly: true, State: func() any { return &MsgState{} }, Default: msgDefault,
		Run: func(x *Exec, s any) error {
			m := s.(*MsgState)
			if (m.ContentType >= 1000 && m.ContentType <= 5000) || m.ContentType == ContentTyping {
				return errNotSent // msgtransfer filterAfterMsg: defaultDeniedTypes
			}
			req := &CallbackAfterMsgSaveDBReq{CommonCallbackReq: toCommonCallback(x, m, name)}
			switch m.SessionType {
			case 1, 4:
				req.RecvID = m.RecvID
			case 3:
				req.GroupID = m.GroupID
			}
			return x.post(name, true, req, &CommonCallbackResp{}, buildKeyMsgDataQuery(m))
		}}
}

// plain: commands whose reply can only reject (or, for after commands, is ignored); the
// state is the request struct itself, named by the callback's own field names.
func plain[T any](name string, after bool, def string, setCommand func(*T)) *Command {
	return &Command{Name: name, After: after, State: func() any { return new(T) }, Default: def,
		Run: func(x *Exec, s any) error {
			req := *s.(*T) // a copy: the command name is not part of OpenIM's object
			setCommand(&req)
			return x.post(name, after, &req, &CommonCallbackResp{}, nil)
		}}
}

func userStatus(op string, s *UserStatusBaseCallback, name string) {
	s.CallbackCommand = name
	s.OperationID = op
	s.Platform = platformNames[s.PlatformID]
}

func pushBase(x *Exec, name string, p *PushState) UserStatusBaseCallback {
	return UserStatusBaseCallback{CallbackCommand: name, OperationID: x.C.OperationID,
		PlatformID: int(p.SenderPlatformID), Platform: platformNames[int(p.SenderPlatformID)]}
}

const pushDefault = `{"sendID":"u1","recvID":"","groupID":"g1","clientMsgID":"cm-1","senderPlatformID":2,"sessionType":3,
"contentType":101,"content":"{\"content\":\"hi\"}","seq":42,"atUserIDList":null,"userIDList":["u2","u3"],
"offlinePushInfo":{"title":"t0","desc":"d0","ex":"e0","iOSPushSound":"s0","iOSBadgeCount":false,"signalInfo":"si0"}}`

func Commands() []*Command {
	cmds := []*Command{
		msgSingle("callbackBeforeSendSingleMsgCommand", false),
		msgSingle("callbackAfterSendSingleMsgCommand", true),
		msgGroup("callbackBeforeSendGroupMsgCommand", false),
		msgGroup("callbackAfterSendGroupMsgCommand", true),
		msgModify(),
		plain("callbackAfterGroupMsgReadCommand", true,
			`{"sendID":"u1","receiveID":"g1","unreadMsgNum":3,"contentType":101}`,
			func(r *CallbackGroupMsgReadReq) { r.CallbackCommand = "callbackAfterGroupMsgReadCommand" }),
		plain("callbackAfterSingleMsgReadCommand", true,
			`{"conversationID":"si_u1_u2","userID":"u1","Seqs":[1,2,3],"contentType":0}`,
			func(r *CallbackSingleMsgReadReq) { r.CallbackCommand = "callbackAfterSingleMsgReadCommand" }),
		plain("callbackBeforeAfterMsgCommand", true, `{"conversationID":"si_u1_u2","seq":7,"userID":"u1"}`,
			func(r *CallbackAfterRevokeMsgReq) { r.CallbackCommand = "callbackBeforeAfterMsgCommand" }),
		msgSaveDB(),
		{Name: "callbackAfterUserOnlineCommand", After: true, State: func() any { return &CallbackUserOnlineReq{} },
			Default: `{"platformID":1,"userID":"u1","seq":1700000000000,"isAppBackground":false,"connID":""}`,
			Run: func(x *Exec, s any) error {
				r := *s.(*CallbackUserOnlineReq)
				userStatus(x.C.OperationID, &r.UserStatusBaseCallback, "callbackAfterUserOnlineCommand")
				return x.post(r.CallbackCommand, true, &r, &CommonCallbackResp{}, nil)
			}},
		{Name: "callbackAfterUserOfflineCommand", After: true, State: func() any { return &CallbackUserOfflineReq{} },
			Default: `{"platformID":5,"userID":"u1","seq":1700000000000,"connID":""}`,
			Run: func(x *Exec, s any) error {
				r := *s.(*CallbackUserOfflineReq)
				userStatus(x.C.OperationID, &r.UserStatusBaseCallback, "callbackAfterUserOfflineCommand")
				return x.post(r.CallbackCommand, true, &r, &CommonCallbackResp{}, nil)
			}},
		{Name: "callbackAfterUserKickOffCommand", After: true, State: func() any { return &CallbackUserKickOffReq{} },
			Default: `{"platformID":2,"userID":"u1","seq":1700000000000}`,
			Run: func(x *Exec, s any) error {
				r := *s.(*CallbackUserKickOffReq)
				userStatus(x.C.OperationID, &r.UserStatusBaseCallback, "callbackAfterUserKickOffCommand")
				return x.post(r.CallbackCommand, true, &r, &CommonCallbackResp{}, nil)
			}},
		{Name: "callbackBeforeOfflinePushCommand", State: func() any { return &PushState{} }, Default: pushDefault,
			Run: func(x *Exec, s any) error {
				p := s.(*PushState)
				if p.ContentType == ContentTyping {
					return errNotSent
				}
				req := &CallbackBeforePushReq{
					UserStatusBatchCallbackReq: UserStatusBatchCallbackReq{
						UserStatusBaseCallback: pushBase(x, "callbackBeforeOfflinePushCommand", p), UserIDList: p.UserIDList},
					OfflinePushInfo: p.OfflinePushInfo, ClientMsgID: p.ClientMsgID, SendID: p.SendID, GroupID: p.GroupID,
					ContentType: p.ContentType, SessionType: p.SessionType, AtUserIDs: p.AtUserIDList, Content: p.Content,
				}
				resp := &CallbackBeforePushResp{}
				if err := x.post(req.CallbackCommand, false, req, resp, nil); err != nil {
					return err
				}
				if len(resp.UserIDs) != 0 {
					p.UserIDList = resp.UserIDs
				}
				if resp.OfflinePushInfo != nil {
					p.OfflinePushInfo = resp.OfflinePushInfo
				}
				return nil
			}},
		{Name: "callbackBeforeOnlinePushCommand", State: func() any { return &PushState{} }, Default: pushDefault,
			Run: func(x *Exec, s any) error {
				p := s.(*PushState)
				if p.ContentType == ContentTyping {
					return errNotSent
				}
				req := CallbackBeforePushReq{
					UserStatusBatchCallbackReq: UserStatusBatchCallbackReq{
						UserStatusBaseCallback: pushBase(x, "callbackBeforeOnlinePushCommand", p), UserIDList: p.UserIDList},
					ClientMsgID: p.ClientMsgID, SendID: p.SendID, GroupID: p.GroupID,
					ContentType: p.ContentType, SessionType: p.SessionType, AtUserIDs: p.AtUserIDList, Content: p.Content,
				}
				return x.post(req.CallbackCommand, false, req, &CallbackBeforePushResp{}, nil)
			}},
		{Name: "callbackBeforeGroupOnlinePushCommand", State: func() any { return &PushState{} }, Default: pushDefault,
			Run: func(x *Exec, s any) error {
				p := s.(*PushState)
				if p.ContentType == ContentTyping {
					return errNotSent
				}
				req := CallbackBeforeSuperGroupOnlinePushReq{
					UserStatusBaseCallback: pushBase(x, "callbackBeforeGroupOnlinePushCommand", p),
					ClientMsgID:            p.ClientMsgID, SendID: p.SendID, GroupID: p.GroupID, ContentType: p.ContentType,
					SessionType: p.SessionType, AtUserIDs: p.AtUserIDList, Content: p.Content, Seq: p.Seq,
				}
				resp := &CallbackBeforeSuperGroupOnlinePushResp{}
				if err := x.post(req.CallbackCommand, false, req, resp, nil); err != nil {
					return err
				}
				if len(resp.UserIDs) != 0 {
					p.UserIDList = resp.UserIDs
				}
				return nil
			}},
		// relation/callback.go
		plain("callbackBeforeAddFriendCommand", false, `{"fromUserID":"u1","toUserID":"u2","reqMsg":"hi","ex":""}`,
			func(r *CallbackBeforeAddFriendReq) { r.CallbackCommand = "callbackBeforeAddFriendCommand" }),
		plain("callbackAfterAddFriendCommand", true, `{"fromUserID":"u1","toUserID":"u2","reqMsg":"hi"}`,
			func(r *CallbackAfterAddFriendReq) { r.CallbackCommand = "callbackAfterAddFriendCommand" }),
		plain("callbackBeforeAddFriendAgreeCommand", false, `{"fromUserID":"u1","blackUserID":"u2","HandleResult":1,"HandleMsg":"ok"}`,
			func(r *CallbackBeforeAddFriendAgreeReq) { r.CallbackCommand = "callbackBeforeAddFriendAgreeCommand" }),
		plain("callbackAfterAddFriendAgreeCommand", true, `{"fromUserID":"u1","blackUserID":"u2","HandleResult":1,"HandleMsg":"ok"}`,
			func(r *CallbackBeforeAddFriendAgreeReq) { r.CallbackCommand = "callbackAfterAddFriendAgreeCommand" }),
		plain("callbackAfterDeleteFriendCommand", true, `{"ownerUserID":"u1","friendUserID":"u2"}`,
			func(r *CallbackAfterDeleteFriendReq) { r.CallbackCommand = "callbackAfterDeleteFriendCommand" }),
		{Name: "callbackBeforeImportFriendsCommand", State: func() any { return &ImportFriendsState{} },
			Default: `{"ownerUserID":"u1","friendUserIDs":["u2","u3"]}`,
			Run: func(x *Exec, s any) error {
				st := s.(*ImportFriendsState)
				req := &CallbackBeforeImportFriendsReq{CallbackCommand: "callbackBeforeImportFriendsCommand",
					OwnerUserID: st.OwnerUserID, FriendUserIDs: st.FriendUserIDs}
				resp := &CallbackBeforeImportFriendsResp{}
				if err := x.post(string(req.CallbackCommand), false, req, resp, nil); err != nil {
					return err
				}
				if len(resp.FriendUserIDs) > 0 {
					st.FriendUserIDs = resp.FriendUserIDs
				}
				return nil
			}},
		plain("callbackAfterImportFriendsCommand", true, `{"ownerUserID":"u1","friendUserIDs":["u2","u3"]}`,
			func(r *CallbackBeforeImportFriendsReq) { r.CallbackCommand = "callbackAfterImportFriendsCommand" }),
		{Name: "callbackBeforeSetFriendRemarkCommand", State: func() any { return &FriendRemarkState{} },
			Default: `{"ownerUserID":"u1","friendUserID":"u2","remark":"r0"}`,
			Run: func(x *Exec, s any) error {
				st := s.(*FriendRemarkState)
				req := &CallbackBeforeSetFriendRemarkReq{CallbackCommand: "callbackBeforeSetFriendRemarkCommand",
					OwnerUserID: st.OwnerUserID, FriendUserID: st.FriendUserID, Remark: st.Remark}
				resp := &CallbackBeforeSetFriendRemarkResp{}
				if err := x.post(string(req.CallbackCommand), false, req, resp, nil); err != nil {
					return err
				}
				if resp.Remark != "" {
					st.Remark = resp.Remark
				}
				return nil
			}},
		plain("callbackAfterSetFriendRemarkCommand", true, `{"ownerUserID":"u1","friendUserID":"u2","remark":"r0"}`,
			func(r *CallbackBeforeSetFriendRemarkReq) { r.CallbackCommand = "callbackAfterSetFriendRemarkCommand" }),
		plain("callbackBeforeAddBlackCommand", false, `{"ownerUserID":"u1","blackUserID":"u2"}`,
			func(r *CallbackBeforeAddBlackReq) { r.CallbackCommand = "callbackBeforeAddBlackCommand" }),
		plain("callbackAfterRemoveBlackCommand", true, `{"ownerUserID":"u1","blackUserID":"u2"}`,
			func(r *CallbackAfterRemoveBlackReq) { r.CallbackCommand = "callbackAfterRemoveBlackCommand" }),
		// user/callback.go
		{Name: "callbackBeforeUpdateUserInfoCommand", State: func() any { return &UpdateUserInfoState{} },
			Default: `{"userID":"u1","nickName":"n0","faceURL":"f0","ex":"x0"}`,
			Run: func(x *Exec, s any) error {
				u := s.(*UpdateUserInfoState)
				req := &CallbackBeforeUpdateUserInfoReq{CallbackCommand: "callbackBeforeUpdateUserInfoCommand",
					UserID: u.UserID, FaceURL: &u.FaceURL, Nickname: &u.Nickname}
				resp := &CallbackBeforeUpdateUserInfoResp{}
				if err := x.post(string(req.CallbackCommand), false, req, resp, nil); err != nil {
					return err
				}
				NotNilReplace(&u.FaceURL, resp.FaceURL)
				NotNilReplace(&u.Ex, resp.Ex)
				NotNilReplace(&u.Nickname, resp.Nickname)
				return nil
			}},
		{Name: "callbackAfterUpdateUserInfoCommand", After: true, State: func() any { return &UpdateUserInfoState{} },
			Default: `{"userID":"u1","nickName":"n0","faceURL":"f0","ex":"x0"}`,
			Run: func(x *Exec, s any) error {
				u := s.(*UpdateUserInfoState)
				req := &CallbackAfterUpdateUserInfoReq{CallbackCommand: "callbackAfterUpdateUserInfoCommand",
					UserID: u.UserID, FaceURL: u.FaceURL, Nickname: u.Nickname}
				return x.post(string(req.CallbackCommand), true, req, &CommonCallbackResp{}, nil)
			}},
		{Name: "callbackBeforeUpdateUserInfoExCommand", State: func() any { return &UpdateUserInfoExState{} },
			Default: `{"userID":"u1","nickName":"n0","faceURL":"f0","ex":"x0"}`,
			Run: func(x *Exec, s any) error {
				u := s.(*UpdateUserInfoExState)
				req := &CallbackBeforeUpdateUserInfoExReq{CallbackCommand: "callbackBeforeUpdateUserInfoExCommand",
					UserID: u.UserID, FaceURL: u.FaceURL, Nickname: u.Nickname}
				resp := &CallbackBeforeUpdateUserInfoExResp{}
				if err := x.post(string(req.CallbackCommand), false, req, resp, nil); err != nil {
					return err
				}
				// OpenIM passes the request's own pointers: nil when the client did not send the field.
				NotNilReplace(u.FaceURL, resp.FaceURL)
				NotNilReplace(u.Ex, resp.Ex)
				NotNilReplace(u.Nickname, resp.Nickname)
				return nil
			}},
		{Name: "callbackAfterUpdateUserInfoExCommand", After: true, State: func() any { return &UpdateUserInfoExState{} },
			Default: `{"userID":"u1","nickName":"n0","faceURL":"f0","ex":"x0"}`,
			Run: func(x *Exec, s any) error {
				u := s.(*UpdateUserInfoExState)
				req := &CallbackBeforeUpdateUserInfoExReq{CallbackCommand: "callbackAfterUpdateUserInfoExCommand",
					UserID: u.UserID, FaceURL: u.FaceURL, Nickname: u.Nickname}
				return x.post(string(req.CallbackCommand), true, req, &CommonCallbackResp{}, nil)
			}},
		{Name: "callbackBeforeUserRegisterCommand", State: func() any { return &UserRegisterState{} },
			Default: `{"users":[{"userID":"u1","nickname":"n1","faceURL":"","ex":"","createTime":0,"appMangerLevel":1,"globalRecvMsgOpt":0}]}`,
			Run: func(x *Exec, s any) error {
				st := s.(*UserRegisterState)
				req := &CallbackBeforeUserRegisterReq{CallbackCommand: "callbackBeforeUserRegisterCommand", Users: st.Users}
				resp := &CallbackBeforeUserRegisterResp{}
				if err := x.post(string(req.CallbackCommand), false, req, resp, nil); err != nil {
					return err
				}
				if len(resp.Users) != 0 {
					st.Users = resp.Users
				}
				return nil
			}},
		plain("callbackAfterUserRegisterCommand", true,
			`{"users":[{"userID":"u1","nickname":"n1","faceURL":"","ex":"","createTime":0,"appMangerLevel":1,"globalRecvMsgOpt":0}]}`,
			func(r *CallbackBeforeUserRegisterReq) { r.CallbackCommand = "callbackAfterUserRegisterCommand" }),
	}
	cmds = append(cmds, groupCommands()...)
	cmds = append(cmds, conversationCommands()...)
	return cmds
}

const createGroupDefault = `{"groupID":"","groupName":"gn0","notification":"no0","introduction":"in0","faceURL":"f0",
"ownerUserID":"u1","createTime":0,"memberCount":0,"ex":"x0","status":0,"creatorUserID":"u1","groupType":2,
"needVerification":0,"lookMemberInfo":0,"applyMemberFriend":0,"notificationUpdateTime":0,"notificationUserID":"",
"req.ownerUserID":"u1","req.adminUserIDs":["u2"],"req.memberUserIDs":["u3","u4"]}`

func initMembers(s *CreateGroupState) []*GroupAddMemberInfo {
	list := []*GroupAddMemberInfo{{UserID: s.OwnerUserID, RoleLevel: 100}}
	for _, u := range s.AdminUserIDs {
		list = append(list, &GroupAddMemberInfo{UserID: u, RoleLevel: 60})
	}
	for _, u := range s.MemberUserIDs {
		list = append(list, &GroupAddMemberInfo{UserID: u, RoleLevel: 20})
	}
	return list
}

func groupCommands() []*Command {
	return []*Command{
		{Name: "callbackBeforeCreateGroupCommand", State: func() any { return &CreateGroupState{GroupInfo: &GroupInfo{}} },
			Default: createGroupDefault,
			Run: func(x *Exec, s any) error {
				st := s.(*CreateGroupState)
				req := &CallbackBeforeCreateGroupReq{CallbackCommand: "callbackBeforeCreateGroupCommand",
					OperationID: x.C.OperationID, GroupInfo: st.GroupInfo, InitMemberList: initMembers(st)}
				resp := &CallbackBeforeCreateGroupResp{}
				if err := x.post(string(req.CallbackCommand), false, req, resp, nil); err != nil {
					return err
				}
				g := st.GroupInfo
				NotNilReplace(&g.GroupID, resp.GroupID)
				NotNilReplace(&g.GroupName, resp.GroupName)
				NotNilReplace(&g.Notification, resp.Notification)
				NotNilReplace(&g.Introduction, resp.Introduction)
				NotNilReplace(&g.FaceURL, resp.FaceURL)
				NotNilReplace(&g.OwnerUserID, resp.OwnerUserID)
				NotNilReplace(&g.Ex, resp.Ex)
				NotNilReplace(&g.Status, resp.Status)
				NotNilReplace(&g.CreatorUserID, resp.CreatorUserID)
				NotNilReplace(&g.GroupType, resp.GroupType)
				NotNilReplace(&g.NeedVerification, resp.NeedVerification)
				NotNilReplace(&g.LookMemberInfo, resp.LookMemberInfo)
				return nil // resp.ApplyMemberFriend is decoded but never applied
			}},
		{Name: "callbackAfterCreateGroupCommand", After: true, State: func() any { return &CreateGroupState{GroupInfo: &GroupInfo{}} },
			Default: createGroupDefault,
			Run: func(x *Exec, s any) error {
				st := s.(*CreateGroupState)
				req := &CallbackAfterCreateGroupReq{CallbackCommand: "callbackAfterCreateGroupCommand",
					GroupInfo: st.GroupInfo, InitMemberList: initMembers(st)}
				return x.post(string(req.CallbackCommand), true, req, &CommonCallbackResp{}, nil)
			}},
		{Name: "callbackBeforeMembersJoinGroupCommand", State: func() any { return &MembersJoinState{} },
			Default: `{"groupID":"g1","groupEx":"gx","memberList":[{"userID":"u2","nickname":"n2","faceURL":"f2","roleLevel":20,"muteEndTime":0,"ex":"x2"},{"userID":"u3","nickname":"n3","faceURL":"f3","roleLevel":20,"muteEndTime":0,"ex":"x3"}]}`,
			Run: func(x *Exec, s any) error {
				st := s.(*MembersJoinState)
				byID := map[string]*GroupMember{}
				var list []*CallbackGroupMember
				for _, m := range st.Members {
					byID[m.UserID] = m
					list = append(list, &CallbackGroupMember{UserID: m.UserID, Ex: m.Ex})
				}
				req := &CallbackBeforeMembersJoinGroupReq{CallbackCommand: "callbackBeforeMembersJoinGroupCommand",
					GroupID: st.GroupID, MembersList: list, GroupEx: st.GroupEx}
				resp := &CallbackBeforeMembersJoinGroupResp{}
				if err := x.post(string(req.CallbackCommand), false, req, resp, nil); err != nil {
					return err
				}
				for _, r := range resp.MemberCallbackList {
					if _, ok := byID[(*r.UserID)]; ok { // nil userID (or a null entry): panic, as in OpenIM
						if r.MuteEndTime != nil {
							byID[*r.UserID].MuteEndTime = time.UnixMilli(*r.MuteEndTime).UnixMilli()
						}
						NotNilReplace(&byID[*r.UserID].FaceURL, r.FaceURL)
						NotNilReplace(&byID[*r.UserID].Ex, r.Ex)
						NotNilReplace(&byID[*r.UserID].Nickname, r.Nickname)
						NotNilReplace(&byID[*r.UserID].RoleLevel, r.RoleLevel)
					}
				}
				return nil
			}},
		{Name: "callbackBeforeSetGroupMemberInfoCommand", State: func() any { return &SetGroupMemberInfoState{} },
			Default: `{"groupID":"g1","userID":"u2","nickName":"n0","faceURL":"f0","roleLevel":20,"ex":"x0"}`,
			Run: func(x *Exec, s any) error {
				st := s.(*SetGroupMemberInfoState)
				req := CallbackBeforeSetGroupMemberInfoReq{CallbackCommand: "callbackBeforeSetGroupMemberInfoCommand",
					GroupID: st.GroupID, UserID: st.UserID}
				if st.Nickname != nil {
					req.Nickname = &st.Nickname.Value
				}
				if st.FaceURL != nil {
					req.FaceURL = &st.FaceURL.Value
				}
				if st.RoleLevel != nil {
					req.RoleLevel = &st.RoleLevel.Value
				}
				if st.Ex != nil {
					req.Ex = &st.Ex.Value
				}
				resp := &CallbackBeforeSetGroupMemberInfoResp{}
				if err := x.post(string(req.CallbackCommand), false, req, resp, nil); err != nil {
					return err
				}
				if resp.FaceURL != nil {
					st.FaceURL = String(*resp.FaceURL)
				}
				if resp.Nickname != nil {
					st.Nickname = String(*resp.Nickname)
				}
				if resp.RoleLevel != nil {
					st.RoleLevel = Int32(*resp.RoleLevel)
				}
				if resp.Ex != nil {
					st.Ex = String(*resp.Ex)
				}
				return nil
			}},
		{Name: "callbackAfterSetGroupMemberInfoCommand", After: true, State: func() any { return &SetGroupMemberInfoState{} },
			Default: `{"groupID":"g1","userID":"u2","nickName":"n0","faceURL":"f0","roleLevel":20,"ex":"x0"}`,
			Run: func(x *Exec, s any) error {
				st := s.(*SetGroupMemberInfoState)
				req := CallbackBeforeSetGroupMemberInfoReq{CallbackCommand: "callbackAfterSetGroupMemberInfoCommand",
					GroupID: st.GroupID, UserID: st.UserID}
				if st.Nickname != nil {
					req.Nickname = &st.Nickname.Value
				}
				if st.FaceURL != nil {
					req.FaceURL = &st.FaceURL.Value
				}
				if st.RoleLevel != nil {
					req.RoleLevel = &st.RoleLevel.Value
				}
				if st.Ex != nil {
					req.Ex = &st.Ex.Value
				}
				return x.post(string(req.CallbackCommand), true, req, &CommonCallbackResp{}, nil)
			}},
		plain("callbackAfterQuitGroupCommand", true, `{"groupID":"g1","userID":"u2"}`,
			func(r *CallbackQuitGroupReq) { r.CallbackCommand = "callbackAfterQuitGroupCommand" }),
		plain("callbackAfterKickGroupCommand", true, `{"groupID":"g1","kickedUserIDs":["u2"],"reason":"spam"}`,
			func(r *CallbackKillGroupMemberReq) { r.CallbackCommand = "callbackAfterKickGroupCommand" }),
		plain("callbackAfterDisMissGroupCommand", true, `{"groupID":"g1","ownerID":"u1","groupType":"2","membersID":["u1","u2"]}`,
			func(r *CallbackDisMissGroupReq) { r.CallbackCommand = "callbackAfterDisMissGroupCommand" }),
		plain("callbackBeforeJoinGroupCommand", false, `{"groupID":"g1","groupType":"2","applyID":"u5","reqMessage":"let me in","ex":""}`,
			func(r *CallbackJoinGroupReq) { r.CallbackCommand = "callbackBeforeJoinGroupCommand" }),
		plain("callbackAfterTransferGroupOwnerCommand", true, `{"groupID":"g1","oldOwnerUserID":"u1","newOwnerUserID":"u2"}`,
			func(r *CallbackTransferGroupOwnerReq) { r.CallbackCommand = "callbackAfterTransferGroupOwnerCommand" }),
		{Name: "callbackBeforeInviteJoinGroupCommand", State: func() any { return &InviteState{} },
			Default: `{"groupID":"g1","reason":"friend","invitedUserIDs":["u2","u3"]}`,
			Run: func(x *Exec, s any) error {
				st := s.(*InviteState)
				req := &CallbackBeforeInviteUserToGroupReq{CallbackCommand: "callbackBeforeInviteJoinGroupCommand",
					OperationID: x.C.OperationID, GroupID: st.GroupID, Reason: st.Reason, InvitedUserIDs: st.InvitedUserIDs}
				resp := &CallbackBeforeInviteUserToGroupResp{}
				if err := x.post(string(req.CallbackCommand), false, req, resp, nil); err != nil {
					return err
				}
				// Both lines: "implement members are refused" is commented out; nothing is applied.
				return nil
			}},
		plain("callbackAfterJoinGroupCommand", true, `{"groupID":"g1","reqMessage":"","joinSource":2,"inviterUserID":"u1"}`,
			func(r *CallbackAfterJoinGroupReq) { r.CallbackCommand = "callbackAfterJoinGroupCommand" }),
		{Name: "callbackBeforeSetGroupInfoCommand", State: func() any { return &GroupInfoForSetState{} },
			Default: `{"groupID":"g1","groupName":"gn0","notification":"no0","introduction":"in0","faceURL":"f0","ex":"x0","needVerification":0,"lookMemberInfo":0,"applyMemberFriend":0}`,
			Run: func(x *Exec, s any) error {
				g := s.(*GroupInfoForSetState)
				req := &CallbackBeforeSetGroupInfoReq{CallbackCommand: "callbackBeforeSetGroupInfoCommand",
					GroupID: g.GroupID, Notification: g.Notification, Introduction: g.Introduction, FaceURL: g.FaceURL, GroupName: g.GroupName}
				if g.Ex != nil {
					req.Ex = g.Ex.Value
				}
				if g.NeedVerification != nil {
					req.NeedVerification = g.NeedVerification.Value
				}
				if g.LookMemberInfo != nil {
					req.LookMemberInfo = g.LookMemberInfo.Value
				}
				if g.ApplyMemberFriend != nil {
					req.ApplyMemberFriend = g.ApplyMemberFriend.Value
				}
				resp := &CallbackBeforeSetGroupInfoResp{}
				if err := x.post(string(req.CallbackCommand), false, req, resp, nil); err != nil {
					return err
				}
				if resp.Ex != nil {
					g.Ex = String(*resp.Ex)
				}
				if resp.NeedVerification != nil {
					g.NeedVerification = Int32(*resp.NeedVerification)
				}
				if resp.LookMemberInfo != nil {
					g.LookMemberInfo = Int32(*resp.LookMemberInfo)
				}
				if resp.ApplyMemberFriend != nil {
					g.ApplyMemberFriend = Int32(*resp.ApplyMemberFriend)
				}
				// &resp.X is never nil: these four are always applied ("" = no change later on).
				NotNilReplace(&g.GroupID, &resp.GroupID)
				NotNilReplace(&g.GroupName, &resp.GroupName)
				NotNilReplace(&g.FaceURL, &resp.FaceURL)
				NotNilReplace(&g.Introduction, &resp.Introduction)
				return nil
			}},
		{Name: "callbackAfterSetGroupInfoCommand", After: true, State: func() any { return &GroupInfoForSetState{} },
			Default: `{"groupID":"g1","groupName":"gn0","notification":"no0","introduction":"in0","faceURL":"f0","ex":"x0","needVerification":0,"lookMemberInfo":0,"applyMemberFriend":0}`,
			Run: func(x *Exec, s any) error {
				g := s.(*GroupInfoForSetState)
				req := &CallbackAfterSetGroupInfoReq{CallbackCommand: "callbackAfterSetGroupInfoCommand",
					GroupID: g.GroupID, Notification: g.Notification, Introduction: g.Introduction, FaceURL: g.FaceURL, GroupName: g.GroupName}
				if g.Ex != nil {
					req.Ex = &g.Ex.Value
				}
				if g.NeedVerification != nil {
					req.NeedVerification = &g.NeedVerification.Value
				}
				if g.LookMemberInfo != nil {
					req.LookMemberInfo = &g.LookMemberInfo.Value
				}
				if g.ApplyMemberFriend != nil {
					req.ApplyMemberFriend = &g.ApplyMemberFriend.Value
				}
				return x.post(string(req.CallbackCommand), true, req, &CommonCallbackResp{}, nil)
			}},
		{Name: "callbackBeforeSetGroupInfoExCommand", State: func() any { return &SetGroupInfoExState{} },
			Default: `{"groupID":"g1","groupName":"gn0","notification":"no0","introduction":"in0","faceURL":"f0","ex":"x0","needVerification":0,"lookMemberInfo":0,"applyMemberFriend":0}`,
			Run: func(x *Exec, s any) error {
				g := s.(*SetGroupInfoExState)
				req := &CallbackBeforeSetGroupInfoExReq{CallbackCommand: "callbackBeforeSetGroupInfoExCommand",
					GroupID: g.GroupID, GroupName: g.GroupName, Notification: g.Notification, Introduction: g.Introduction,
					FaceURL: g.FaceURL, Ex: g.Ex, NeedVerification: g.NeedVerification, LookMemberInfo: g.LookMemberInfo,
					ApplyMemberFriend: g.ApplyMemberFriend}
				resp := &CallbackBeforeSetGroupInfoExResp{}
				if err := x.post(string(req.CallbackCommand), false, req, resp, nil); err != nil {
					return err
				}
				// &resp.X is never nil: every field is replaced, a missing one by nil (= not updated).
				NotNilReplace(&g.GroupID, &resp.GroupID)
				NotNilReplace(&g.GroupName, &resp.GroupName)
				NotNilReplace(&g.FaceURL, &resp.FaceURL)
				NotNilReplace(&g.Introduction, &resp.Introduction)
				NotNilReplace(&g.Ex, &resp.Ex)
				NotNilReplace(&g.NeedVerification, &resp.NeedVerification)
				NotNilReplace(&g.LookMemberInfo, &resp.LookMemberInfo)
				NotNilReplace(&g.ApplyMemberFriend, &resp.ApplyMemberFriend)
				return nil
			}},
		{Name: "callbackAfterSetGroupInfoExCommand", After: true, State: func() any { return &SetGroupInfoExState{} },
			Default: `{"groupID":"g1","groupName":"gn0","notification":"no0","introduction":"in0","faceURL":"f0","ex":"x0","needVerification":0,"lookMemberInfo":0,"applyMemberFriend":0}`,
			Run: func(x *Exec, s any) error {
				g := s.(*SetGroupInfoExState)
				req := &CallbackAfterSetGroupInfoExReq{CallbackCommand: "callbackAfterSetGroupInfoExCommand",
					GroupID: g.GroupID, GroupName: g.GroupName, Notification: g.Notification, Introduction: g.Introduction,
					FaceURL: g.FaceURL, Ex: g.Ex, NeedVerification: g.NeedVerification, LookMemberInfo: g.LookMemberInfo,
					ApplyMemberFriend: g.ApplyMemberFriend}
				return x.post(string(req.CallbackCommand), true, req, &CommonCallbackResp{}, nil)
			}},
	}
}

const convDefault = `{"ownerUserId":"u1","conversationId":"si_u1_u2","conversationType":1,"userId":"u2","groupId":"",
"recvMsgOpt":0,"isPinned":false,"isPrivateChat":false,"burnDuration":0,"groupAtType":0,"attachedInfo":"a0","ex":"x0"}`

const groupConvDefault = `{"ownerUserId":"u1","conversationId":"sg_g1","conversationType":3,"userId":"","groupId":"g1"}`

func applyConversation(c *ConversationState, resp *CallbackBeforeCreateSingleChatConversationsResp) {
	NotNilReplace(&c.RecvMsgOpt, resp.RecvMsgOpt)
	NotNilReplace(&c.IsPinned, resp.IsPinned)
	NotNilReplace(&c.IsPrivateChat, resp.IsPrivateChat)
	NotNilReplace(&c.BurnDuration, resp.BurnDuration)
	NotNilReplace(&c.GroupAtType, resp.GroupAtType)
	NotNilReplace(&c.AttachedInfo, resp.AttachedInfo)
	NotNilReplace(&c.Ex, resp.Ex)
}

func singleConvReq(name string, c *ConversationState) *CallbackBeforeCreateSingleChatConversationsReq {
	return &CallbackBeforeCreateSingleChatConversationsReq{CallbackCommand: CallbackCommand(name),
		OwnerUserID: c.OwnerUserID, ConversationID: c.ConversationID, ConversationType: c.ConversationType, UserID: c.UserID,
		RecvMsgOpt: c.RecvMsgOpt, IsPinned: c.IsPinned, IsPrivateChat: c.IsPrivateChat, BurnDuration: c.BurnDuration,
		GroupAtType: c.GroupAtType, AttachedInfo: c.AttachedInfo, Ex: c.Ex}
}

// groupConvReq: OpenIM does not set OwnerUserID for the group-chat conversation callbacks.
func groupConvReq(name string, c *ConversationState) *CallbackBeforeCreateGroupChatConversationsReq {
	return &CallbackBeforeCreateGroupChatConversationsReq{CallbackCommand: CallbackCommand(name),
		ConversationID: c.ConversationID, ConversationType: c.ConversationType, GroupID: c.GroupID,
		RecvMsgOpt: c.RecvMsgOpt, IsPinned: c.IsPinned, IsPrivateChat: c.IsPrivateChat, BurnDuration: c.BurnDuration,
		GroupAtType: c.GroupAtType, AttachedInfo: c.AttachedInfo, Ex: c.Ex}
}

func conversationCommands() []*Command {
	conv := func() any { return &ConversationState{} }
	return []*Command{
		{Name: "callbackBeforeCreateSingleChatConversationsCommand", MainOnly: true, State: conv, Default: convDefault,
			Run: func(x *Exec, s any) error {
				c := s.(*ConversationState)
				resp := &CallbackBeforeCreateSingleChatConversationsResp{}
				if err := x.post("callbackBeforeCreateSingleChatConversationsCommand", false,
					singleConvReq("callbackBeforeCreateSingleChatConversationsCommand", c), resp, nil); err != nil {
					return err
				}
				applyConversation(c, resp)
				return nil
			}},
		{Name: "callbackAfterCreateSingleChatConversationsCommand", After: true, MainOnly: true, State: conv, Default: convDefault,
			Run: func(x *Exec, s any) error {
				return x.post("callbackAfterCreateSingleChatConversationsCommand", true,
					singleConvReq("callbackAfterCreateSingleChatConversationsCommand", s.(*ConversationState)), &CommonCallbackResp{}, nil)
			}},
		{Name: "callbackBeforeCreateGroupChatConversationsCommand", MainOnly: true, State: conv, Default: convDefault + "\n" + groupConvDefault,
			Run: func(x *Exec, s any) error {
				c := s.(*ConversationState)
				resp := &CallbackBeforeCreateSingleChatConversationsResp{} // same fields as ...GroupChatConversationsResp
				if err := x.post("callbackBeforeCreateGroupChatConversationsCommand", false,
					groupConvReq("callbackBeforeCreateGroupChatConversationsCommand", c), resp, nil); err != nil {
					return err
				}
				applyConversation(c, resp)
				return nil
			}},
		{Name: "callbackAfterCreateGroupChatConversationsCommand", After: true, MainOnly: true, State: conv, Default: convDefault + "\n" + groupConvDefault,
			Run: func(x *Exec, s any) error {
				return x.post("callbackAfterCreateGroupChatConversationsCommand", true,
					groupConvReq("callbackAfterCreateGroupChatConversationsCommand", s.(*ConversationState)), &CommonCallbackResp{}, nil)
			}},
	}
}
