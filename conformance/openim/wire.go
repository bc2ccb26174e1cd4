package openim

// Request and response structs of OpenIM's webhooks, field names and JSON tags as in
// open-im-server pkg/callbackstruct/*.go at 7848d7c (main); v3.8.3-patch.16 has the same
// structs minus conversation.go and CallbackAfterMsgSaveDB*. sdkws/apistruct types are the
// ones those structs embed (openimsdk/protocol v0.0.73-alpha.18, open-im-server pkg/apistruct).

import "errors"

// ---- pkg/callbackstruct/common.go ------------------------------------------------------

const Next = 1

type CommonCallbackReq struct {
	SendID           string   `json:"sendID"`
	CallbackCommand  string   `json:"callbackCommand"`
	ServerMsgID      string   `json:"serverMsgID"`
	ClientMsgID      string   `json:"clientMsgID"`
	OperationID      string   `json:"operationID"`
	SenderPlatformID int32    `json:"senderPlatformID"`
	SenderNickname   string   `json:"senderNickname"`
	SessionType      int32    `json:"sessionType"`
	MsgFrom          int32    `json:"msgFrom"`
	ContentType      int32    `json:"contentType"`
	Status           int32    `json:"status"`
	SendTime         int64    `json:"sendTime"`
	CreateTime       int64    `json:"createTime"`
	Content          string   `json:"content"`
	Seq              uint32   `json:"seq"`
	AtUserIDList     []string `json:"atUserList"`
	SenderFaceURL    string   `json:"faceURL"`
	Ex               string   `json:"ex"`
}

type CallbackResp interface{ Parse() error }

type CommonCallbackResp struct {
	ActionCode int32  `json:"actionCode"`
	ErrCode    int32  `json:"errCode"`
	ErrMsg     string `json:"errMsg"`
	ErrDlt     string `json:"errDlt"`
	NextCode   int32  `json:"nextCode"`
}

// CodeError stands for errs.NewCodeError(code, msg).WithDetail(detail): the error a
// rejection hands back to the user's request.
type CodeError struct {
	Code   int
	Msg    string
	Detail string
}

func (e *CodeError) Error() string { return e.Msg }

// Parse is CommonCallbackResp.Parse: only actionCode == 0 (servererrs.NoError) together with
// nextCode == 1 rejects; every other reply is a success.
func (c CommonCallbackResp) Parse() error {
	if c.ActionCode == 0 && c.NextCode == Next {
		return &CodeError{Code: int(c.ErrCode), Msg: c.ErrMsg, Detail: c.ErrDlt}
	}
	return nil
}

type UserStatusBaseCallback struct {
	CallbackCommand string `json:"callbackCommand"`
	OperationID     string `json:"operationID"`
	PlatformID      int    `json:"platformID"`
	Platform        string `json:"platform"`
}

type UserStatusCallbackReq struct {
	UserStatusBaseCallback
	UserID string `json:"userID"`
}

type UserStatusBatchCallbackReq struct {
	UserStatusBaseCallback
	UserIDList []string `json:"userIDList"`
}

// CallbackCommand is embedded (tag "callbackCommand") in most group/user/friend requests.
type CallbackCommand string

// ---- sdkws / apistruct ------------------------------------------------------------------

type OfflinePushInfo struct {
	Title         string `json:"title"`
	Desc          string `json:"desc"`
	Ex            string `json:"ex"`
	IOSPushSound  string `json:"iOSPushSound"`
	IOSBadgeCount bool   `json:"iOSBadgeCount"`
	SignalInfo    string `json:"signalInfo"`
}

type GroupInfo struct {
	GroupID                string `json:"groupID"`
	GroupName              string `json:"groupName"`
	Notification           string `json:"notification"`
	Introduction           string `json:"introduction"`
	FaceURL                string `json:"faceURL"`
	OwnerUserID            string `json:"ownerUserID"`
	CreateTime             int64  `json:"createTime"`
	MemberCount            uint32 `json:"memberCount"`
	Ex                     string `json:"ex"`
	Status                 int32  `json:"status"`
	CreatorUserID          string `json:"creatorUserID"`
	GroupType              int32  `json:"groupType"`
	NeedVerification       int32  `json:"needVerification"`
	LookMemberInfo         int32  `json:"lookMemberInfo"`
	ApplyMemberFriend      int32  `json:"applyMemberFriend"`
	NotificationUpdateTime int64  `json:"notificationUpdateTime"`
	NotificationUserID     string `json:"notificationUserID"`
}

type UserInfo struct {
	UserID           string `json:"userID"`
	Nickname         string `json:"nickname"`
	FaceURL          string `json:"faceURL"`
	Ex               string `json:"ex"`
	CreateTime       int64  `json:"createTime"`
	AppMangerLevel   int32  `json:"appMangerLevel"`
	GlobalRecvMsgOpt int32  `json:"globalRecvMsgOpt"`
}

type GroupAddMemberInfo struct {
	UserID    string `json:"userID"`
	RoleLevel int32  `json:"roleLevel"`
}

type KeyMsgData struct {
	SendID  string `json:"sendID"`
	RecvID  string `json:"recvID"`
	GroupID string `json:"groupID"`
}

// ---- pkg/callbackstruct/message.go -----------------------------------------------------

type CallbackBeforeSendSingleMsgReq struct {
	CommonCallbackReq
	RecvID string `json:"recvID"`
}

type CallbackBeforeSendGroupMsgReq struct {
	CommonCallbackReq
	GroupID string `json:"groupID"`
}

type CallbackMsgModifyCommandReq struct {
	CommonCallbackReq
}

type CallbackMsgModifyCommandResp struct {
	CommonCallbackResp
	Content          *string          `json:"content"`
	RecvID           *string          `json:"recvID"`
	GroupID          *string          `json:"groupID"`
	ClientMsgID      *string          `json:"clientMsgID"`
	ServerMsgID      *string          `json:"serverMsgID"`
	SenderPlatformID *int32           `json:"senderPlatformID"`
	SenderNickname   *string          `json:"senderNickname"`
	SenderFaceURL    *string          `json:"senderFaceURL"`
	SessionType      *int32           `json:"sessionType"`
	MsgFrom          *int32           `json:"msgFrom"`
	ContentType      *int32           `json:"contentType"`
	Status           *int32           `json:"status"`
	Options          *map[string]bool `json:"options"`
	OfflinePushInfo  *OfflinePushInfo `json:"offlinePushInfo"`
	AtUserIDList     *[]string        `json:"atUserIDList"`
	MsgDataList      *[]byte          `json:"msgDataList"`
	AttachedInfo     *string          `json:"attachedInfo"`
	Ex               *string          `json:"ex"`
}

type CallbackGroupMsgReadReq struct {
	CallbackCommand `json:"callbackCommand"`
	SendID          string `json:"sendID"`
	ReceiveID       string `json:"receiveID"`
	UnreadMsgNum    int64  `json:"unreadMsgNum"`
	ContentType     int64  `json:"contentType"`
}

type CallbackSingleMsgReadReq struct {
	CallbackCommand `json:"callbackCommand"`
	ConversationID  string  `json:"conversationID"`
	UserID          string  `json:"userID"`
	Seqs            []int64 `json:"Seqs"`
	ContentType     int32   `json:"contentType"`
}

type CallbackAfterMsgSaveDBReq struct {
	CommonCallbackReq
	RecvID  string `json:"recvID"`
	GroupID string `json:"groupID"`
}

// ---- pkg/callbackstruct/revoke.go ------------------------------------------------------

type CallbackAfterRevokeMsgReq struct {
	CallbackCommand `json:"callbackCommand"`
	ConversationID  string `json:"conversationID"`
	Seq             int64  `json:"seq"`
	UserID          string `json:"userID"`
}

// ---- pkg/callbackstruct/msg_gateway.go -------------------------------------------------

type CallbackUserOnlineReq struct {
	UserStatusCallbackReq
	Seq             int64  `json:"seq"`
	IsAppBackground bool   `json:"isAppBackground"`
	ConnID          string `json:"connID"`
}

type CallbackUserOfflineReq struct {
	UserStatusCallbackReq
	Seq    int64  `json:"seq"`
	ConnID string `json:"connID"`
}

type CallbackUserKickOffReq struct {
	UserStatusCallbackReq
	Seq int64 `json:"seq"`
}

// ---- pkg/callbackstruct/push.go --------------------------------------------------------

type CallbackBeforePushReq struct {
	UserStatusBatchCallbackReq
	*OfflinePushInfo
	ClientMsgID string   `json:"clientMsgID"`
	SendID      string   `json:"sendID"`
	GroupID     string   `json:"groupID"`
	ContentType int32    `json:"contentType"`
	SessionType int32    `json:"sessionType"`
	AtUserIDs   []string `json:"atUserIDList"`
	Content     string   `json:"content"`
}

type CallbackBeforePushResp struct {
	CommonCallbackResp
	UserIDs         []string         `json:"userIDList"`
	OfflinePushInfo *OfflinePushInfo `json:"offlinePushInfo"`
}

type CallbackBeforeSuperGroupOnlinePushReq struct {
	UserStatusBaseCallback
	ClientMsgID string   `json:"clientMsgID"`
	SendID      string   `json:"sendID"`
	GroupID     string   `json:"groupID"`
	ContentType int32    `json:"contentType"`
	SessionType int32    `json:"sessionType"`
	AtUserIDs   []string `json:"atUserIDList"`
	Content     string   `json:"content"`
	Seq         int64    `json:"seq"`
}

type CallbackBeforeSuperGroupOnlinePushResp struct {
	CommonCallbackResp
	UserIDs         []string         `json:"userIDList"`
	OfflinePushInfo *OfflinePushInfo `json:"offlinePushInfo"`
}

// ---- pkg/callbackstruct/friend.go ------------------------------------------------------

type CallbackBeforeAddFriendReq struct {
	CallbackCommand `json:"callbackCommand"`
	FromUserID      string `json:"fromUserID" `
	ToUserID        string `json:"toUserID"`
	ReqMsg          string `json:"reqMsg"`
	Ex              string `json:"ex"`
}

type CallbackBeforeSetFriendRemarkReq struct {
	CallbackCommand `json:"callbackCommand"`
	OwnerUserID     string `json:"ownerUserID"`
	FriendUserID    string `json:"friendUserID"`
	Remark          string `json:"remark"`
}

type CallbackBeforeSetFriendRemarkResp struct {
	CommonCallbackResp
	Remark string `json:"remark"`
}

type CallbackAfterAddFriendReq struct {
	CallbackCommand `json:"callbackCommand"`
	FromUserID      string `json:"fromUserID" `
	ToUserID        string `json:"toUserID"`
	ReqMsg          string `json:"reqMsg"`
}

type CallbackBeforeAddBlackReq struct {
	CallbackCommand `json:"callbackCommand"`
	OwnerUserID     string `json:"ownerUserID" `
	BlackUserID     string `json:"blackUserID"`
}

// CallbackBeforeAddFriendAgreeReq (and the After variant): OpenIM tags ToUserID "blackUserID".
type CallbackBeforeAddFriendAgreeReq struct {
	CallbackCommand `json:"callbackCommand"`
	FromUserID      string `json:"fromUserID" `
	ToUserID        string `json:"blackUserID"`
	HandleResult    int32  `json:"HandleResult"`
	HandleMsg       string `json:"HandleMsg"`
}

type CallbackAfterDeleteFriendReq struct {
	CallbackCommand `json:"callbackCommand"`
	OwnerUserID     string `json:"ownerUserID" `
	FriendUserID    string `json:"friendUserID"`
}

type CallbackBeforeImportFriendsReq struct {
	CallbackCommand `json:"callbackCommand"`
	OwnerUserID     string   `json:"ownerUserID" `
	FriendUserIDs   []string `json:"friendUserIDs"`
}

type CallbackBeforeImportFriendsResp struct {
	CommonCallbackResp
	FriendUserIDs []string `json:"friendUserIDs"`
}

type CallbackAfterRemoveBlackReq struct {
	CallbackCommand `json:"callbackCommand"`
	OwnerUserID     string `json:"ownerUserID"`
	BlackUserID     string `json:"blackUserID"`
}

// ---- pkg/callbackstruct/user.go --------------------------------------------------------

type CallbackBeforeUpdateUserInfoReq struct {
	CallbackCommand `json:"callbackCommand"`
	UserID          string  `json:"userID"`
	Nickname        *string `json:"nickName"`
	FaceURL         *string `json:"faceURL"`
	Ex              *string `json:"ex"`
}

type CallbackBeforeUpdateUserInfoResp struct {
	CommonCallbackResp
	Nickname *string `json:"nickName"`
	FaceURL  *string `json:"faceURL"`
	Ex       *string `json:"ex"`
}

type CallbackAfterUpdateUserInfoReq struct {
	CallbackCommand `json:"callbackCommand"`
	UserID          string `json:"userID"`
	Nickname        string `json:"nickName"`
	FaceURL         string `json:"faceURL"`
	Ex              string `json:"ex"`
}

type CallbackBeforeUpdateUserInfoExReq struct {
	CallbackCommand `json:"callbackCommand"`
	UserID          string       `json:"userID"`
	Nickname        *StringValue `json:"nickName"`
	FaceURL         *StringValue `json:"faceURL"`
	Ex              *StringValue `json:"ex"`
}

type CallbackBeforeUpdateUserInfoExResp struct {
	CommonCallbackResp
	Nickname *StringValue `json:"nickName"`
	FaceURL  *StringValue `json:"faceURL"`
	Ex       *StringValue `json:"ex"`
}

type CallbackBeforeUserRegisterReq struct {
	CallbackCommand `json:"callbackCommand"`
	Users           []*UserInfo `json:"users"`
}

type CallbackBeforeUserRegisterResp struct {
	CommonCallbackResp
	Users []*UserInfo `json:"users"`
}

// ---- pkg/callbackstruct/group.go -------------------------------------------------------

type CallbackBeforeCreateGroupReq struct {
	OperationID     string `json:"operationID"`
	CallbackCommand `json:"callbackCommand"`
	*GroupInfo
	InitMemberList []*GroupAddMemberInfo `json:"initMemberList"`
}

type CallbackBeforeCreateGroupResp struct {
	CommonCallbackResp
	GroupID           *string `json:"groupID"`
	GroupName         *string `json:"groupName"`
	Notification      *string `json:"notification"`
	Introduction      *string `json:"introduction"`
	FaceURL           *string `json:"faceURL"`
	OwnerUserID       *string `json:"ownerUserID"`
	Ex                *string `json:"ex"`
	Status            *int32  `json:"status"`
	CreatorUserID     *string `json:"creatorUserID"`
	GroupType         *int32  `json:"groupType"`
	NeedVerification  *int32  `json:"needVerification"`
	LookMemberInfo    *int32  `json:"lookMemberInfo"`
	ApplyMemberFriend *int32  `json:"applyMemberFriend"`
}

type CallbackAfterCreateGroupReq struct {
	CallbackCommand `json:"callbackCommand"`
	*GroupInfo
	InitMemberList []*GroupAddMemberInfo `json:"initMemberList"`
}

type CallbackGroupMember struct {
	UserID string `json:"userID"`
	Ex     string `json:"ex"`
}

type CallbackBeforeMembersJoinGroupReq struct {
	CallbackCommand `json:"callbackCommand"`
	GroupID         string                 `json:"groupID"`
	MembersList     []*CallbackGroupMember `json:"memberList"`
	GroupEx         string                 `json:"groupEx"`
}

type MemberJoinGroupCallBack struct {
	UserID      *string `json:"userID"`
	Nickname    *string `json:"nickname"`
	FaceURL     *string `json:"faceURL"`
	RoleLevel   *int32  `json:"roleLevel"`
	MuteEndTime *int64  `json:"muteEndTime"`
	Ex          *string `json:"ex"`
}

type CallbackBeforeMembersJoinGroupResp struct {
	CommonCallbackResp
	MemberCallbackList []*MemberJoinGroupCallBack `json:"memberCallbackList"`
}

type CallbackBeforeSetGroupMemberInfoReq struct {
	CallbackCommand `json:"callbackCommand"`
	GroupID         string  `json:"groupID"`
	UserID          string  `json:"userID"`
	Nickname        *string `json:"nickName"`
	FaceURL         *string `json:"faceURL"`
	RoleLevel       *int32  `json:"roleLevel"`
	Ex              *string `json:"ex"`
}

type CallbackBeforeSetGroupMemberInfoResp struct {
	CommonCallbackResp
	Ex        *string `json:"ex"`
	Nickname  *string `json:"nickName"`
	FaceURL   *string `json:"faceURL"`
	RoleLevel *int32  `json:"roleLevel"`
}

type CallbackQuitGroupReq struct {
	CallbackCommand `json:"callbackCommand"`
	GroupID         string `json:"groupID"`
	UserID          string `json:"userID"`
}

type CallbackKillGroupMemberReq struct {
	CallbackCommand `json:"callbackCommand"`
	GroupID         string   `json:"groupID"`
	KickedUserIDs   []string `json:"kickedUserIDs"`
	Reason          string   `json:"reason"`
}

type CallbackDisMissGroupReq struct {
	CallbackCommand `json:"callbackCommand"`
	GroupID         string   `json:"groupID"`
	OwnerID         string   `json:"ownerID"`
	GroupType       string   `json:"groupType"`
	MembersID       []string `json:"membersID"`
}

type CallbackJoinGroupReq struct {
	CallbackCommand `json:"callbackCommand"`
	GroupID         string `json:"groupID"`
	GroupType       string `json:"groupType"`
	ApplyID         string `json:"applyID"`
	ReqMessage      string `json:"reqMessage"`
	Ex              string `json:"ex"`
}

type CallbackTransferGroupOwnerReq struct {
	CallbackCommand `json:"callbackCommand"`
	GroupID         string `json:"groupID"`
	OldOwnerUserID  string `json:"oldOwnerUserID"`
	NewOwnerUserID  string `json:"newOwnerUserID"`
}

type CallbackBeforeInviteUserToGroupReq struct {
	CallbackCommand `json:"callbackCommand"`
	OperationID     string   `json:"operationID"`
	GroupID         string   `json:"groupID"`
	Reason          string   `json:"reason"`
	InvitedUserIDs  []string `json:"invitedUserIDs"`
}

type CallbackBeforeInviteUserToGroupResp struct {
	CommonCallbackResp
	RefusedMembersAccount []string `json:"refusedMembersAccount,omitempty"`
}

type CallbackAfterJoinGroupReq struct {
	CallbackCommand `json:"callbackCommand"`
	OperationID     string `json:"operationID"`
	GroupID         string `json:"groupID"`
	ReqMessage      string `json:"reqMessage"`
	JoinSource      int32  `json:"joinSource"`
	InviterUserID   string `json:"inviterUserID"`
}

type CallbackBeforeSetGroupInfoReq struct {
	CallbackCommand   `json:"callbackCommand"`
	OperationID       string `json:"operationID"`
	GroupID           string `json:"groupID"`
	GroupName         string `json:"groupName"`
	Notification      string `json:"notification"`
	Introduction      string `json:"introduction"`
	FaceURL           string `json:"faceURL"`
	Ex                string `json:"ex"`
	NeedVerification  int32  `json:"needVerification"`
	LookMemberInfo    int32  `json:"lookMemberInfo"`
	ApplyMemberFriend int32  `json:"applyMemberFriend"`
}

type CallbackBeforeSetGroupInfoResp struct {
	CommonCallbackResp
	GroupID           string  ` json:"groupID"`
	GroupName         string  `json:"groupName"`
	Notification      string  `json:"notification"`
	Introduction      string  `json:"introduction"`
	FaceURL           string  `json:"faceURL"`
	Ex                *string `json:"ex"`
	NeedVerification  *int32  `json:"needVerification"`
	LookMemberInfo    *int32  `json:"lookMemberInfo"`
	ApplyMemberFriend *int32  `json:"applyMemberFriend"`
}

type CallbackAfterSetGroupInfoReq struct {
	CallbackCommand   `json:"callbackCommand"`
	OperationID       string  `json:"operationID"`
	GroupID           string  `json:"groupID"`
	GroupName         string  `json:"groupName"`
	Notification      string  `json:"notification"`
	Introduction      string  `json:"introduction"`
	FaceURL           string  `json:"faceURL"`
	Ex                *string `json:"ex"`
	NeedVerification  *int32  `json:"needVerification"`
	LookMemberInfo    *int32  `json:"lookMemberInfo"`
	ApplyMemberFriend *int32  `json:"applyMemberFriend"`
}

type CallbackBeforeSetGroupInfoExReq struct {
	CallbackCommand   `json:"callbackCommand"`
	OperationID       string       `json:"operationID"`
	GroupID           string       `json:"groupID"`
	GroupName         *StringValue `json:"groupName"`
	Notification      *StringValue `json:"notification"`
	Introduction      *StringValue `json:"introduction"`
	FaceURL           *StringValue `json:"faceURL"`
	Ex                *StringValue `json:"ex"`
	NeedVerification  *Int32Value  `json:"needVerification"`
	LookMemberInfo    *Int32Value  `json:"lookMemberInfo"`
	ApplyMemberFriend *Int32Value  `json:"applyMemberFriend"`
}

type CallbackBeforeSetGroupInfoExResp struct {
	CommonCallbackResp
	GroupID           string       `json:"groupID"`
	GroupName         *StringValue `json:"groupName"`
	Notification      *StringValue `json:"notification"`
	Introduction      *StringValue `json:"introduction"`
	FaceURL           *StringValue `json:"faceURL"`
	Ex                *StringValue `json:"ex"`
	NeedVerification  *Int32Value  `json:"needVerification"`
	LookMemberInfo    *Int32Value  `json:"lookMemberInfo"`
	ApplyMemberFriend *Int32Value  `json:"applyMemberFriend"`
}

// CallbackAfterSetGroupInfoExReq has the same fields as the before request.
type CallbackAfterSetGroupInfoExReq CallbackBeforeSetGroupInfoExReq

// ---- pkg/callbackstruct/conversation.go (main only) ------------------------------------

type CallbackBeforeCreateSingleChatConversationsReq struct {
	CallbackCommand  `json:"callbackCommand"`
	OwnerUserID      string `json:"ownerUserId"`
	ConversationID   string `json:"conversationId"`
	ConversationType int32  `json:"conversationType"`
	UserID           string `json:"userId"`
	RecvMsgOpt       int32  `json:"recvMsgOpt"`
	IsPinned         bool   `json:"isPinned"`
	IsPrivateChat    bool   `json:"isPrivateChat"`
	BurnDuration     int32  `json:"burnDuration"`
	GroupAtType      int32  `json:"groupAtType"`
	AttachedInfo     string `json:"attachedInfo"`
	Ex               string `json:"ex"`
}

// CallbackBeforeCreateSingleChatConversationsResp is also the Group variant's reply.
type CallbackBeforeCreateSingleChatConversationsResp struct {
	CommonCallbackResp
	RecvMsgOpt    *int32  `json:"recvMsgOpt"`
	IsPinned      *bool   `json:"isPinned"`
	IsPrivateChat *bool   `json:"isPrivateChat"`
	BurnDuration  *int32  `json:"burnDuration"`
	GroupAtType   *int32  `json:"groupAtType"`
	AttachedInfo  *string `json:"attachedInfo"`
	Ex            *string `json:"ex"`
}

type CallbackBeforeCreateGroupChatConversationsReq struct {
	CallbackCommand  `json:"callbackCommand"`
	OwnerUserID      string `json:"ownerUserId"`
	ConversationID   string `json:"conversationId"`
	ConversationType int32  `json:"conversationType"`
	GroupID          string `json:"groupId"`
	RecvMsgOpt       int32  `json:"recvMsgOpt"`
	IsPinned         bool   `json:"isPinned"`
	IsPrivateChat    bool   `json:"isPrivateChat"`
	BurnDuration     int32  `json:"burnDuration"`
	GroupAtType      int32  `json:"groupAtType"`
	AttachedInfo     string `json:"attachedInfo"`
	Ex               string `json:"ex"`
}

var errNotSent = errors.New("not sent")
