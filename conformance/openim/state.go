package openim

// The OpenIM-internal objects a callback is built from and applied to (sdkws.MsgData,
// group.SetGroupMemberInfo, model.GroupMember, ...), reduced to the fields the callbacks
// read or write. JSON tags are the names of the callback's request/reply fields, so a
// case's input reads like the payload and "applied" names the reply's fields.

type MsgState struct {
	SendID           string           `json:"sendID"`
	RecvID           string           `json:"recvID"`
	GroupID          string           `json:"groupID"`
	ClientMsgID      string           `json:"clientMsgID"`
	ServerMsgID      string           `json:"serverMsgID"`
	SenderPlatformID int32            `json:"senderPlatformID"`
	SenderNickname   string           `json:"senderNickname"`
	SenderFaceURL    string           `json:"senderFaceURL"`
	SessionType      int32            `json:"sessionType"`
	MsgFrom          int32            `json:"msgFrom"`
	ContentType      int32            `json:"contentType"`
	Content          string           `json:"content"` // []byte in sdkws.MsgData
	Seq              int64            `json:"seq"`
	SendTime         int64            `json:"sendTime"`
	CreateTime       int64            `json:"createTime"`
	Status           int32            `json:"status"`
	Options          map[string]bool  `json:"options"`
	OfflinePushInfo  *OfflinePushInfo `json:"offlinePushInfo"`
	AtUserIDList     []string         `json:"atUserIDList"`
	AttachedInfo     string           `json:"attachedInfo"`
	Ex               string           `json:"ex"`
}

// PushState: the message being pushed plus the recipient list the push callbacks may replace.
type PushState struct {
	MsgState
	UserIDList []string `json:"userIDList"`
}

type UpdateUserInfoState struct { // pbuser.UpdateUserInfoReq.UserInfo (sdkws.UserInfo)
	UserID   string `json:"userID"`
	Nickname string `json:"nickName"`
	FaceURL  string `json:"faceURL"`
	Ex       string `json:"ex"`
}

type UpdateUserInfoExState struct { // pbuser.UpdateUserInfoExReq.UserInfo (wrapperspb fields)
	UserID   string       `json:"userID"`
	Nickname *StringValue `json:"nickName"`
	FaceURL  *StringValue `json:"faceURL"`
	Ex       *StringValue `json:"ex"` // never sent in the before request, but applied
}

type UserRegisterState struct {
	Users []*UserInfo `json:"users"`
}

type CreateGroupState struct { // group.CreateGroupReq
	*GroupInfo
	OwnerUserID   string   `json:"req.ownerUserID"`
	AdminUserIDs  []string `json:"req.adminUserIDs"`
	MemberUserIDs []string `json:"req.memberUserIDs"`
}

type GroupMember struct { // model.GroupMember
	UserID      string `json:"userID"`
	Nickname    string `json:"nickname"`
	FaceURL     string `json:"faceURL"`
	RoleLevel   int32  `json:"roleLevel"`
	MuteEndTime int64  `json:"muteEndTime"` // time.Time in OpenIM, shown in ms
	Ex          string `json:"ex"`
}

type MembersJoinState struct {
	GroupID string         `json:"groupID"`
	GroupEx string         `json:"groupEx"`
	Members []*GroupMember `json:"memberList"`
}

// Snapshot shows members by userID, so "applied" says which member changed.
func (s *MembersJoinState) Snapshot() any {
	members := map[string]*GroupMember{}
	for _, m := range s.Members {
		members[m.UserID] = m
	}
	return map[string]any{"groupID": s.GroupID, "groupEx": s.GroupEx, "members": members}
}

type SetGroupMemberInfoState struct { // group.SetGroupMemberInfo
	GroupID   string       `json:"groupID"`
	UserID    string       `json:"userID"`
	Nickname  *StringValue `json:"nickName"`
	FaceURL   *StringValue `json:"faceURL"`
	RoleLevel *Int32Value  `json:"roleLevel"`
	Ex        *StringValue `json:"ex"`
}

type GroupInfoForSetState struct { // sdkws.GroupInfoForSet
	GroupID           string       `json:"groupID"`
	GroupName         string       `json:"groupName"`
	Notification      string       `json:"notification"`
	Introduction      string       `json:"introduction"`
	FaceURL           string       `json:"faceURL"`
	Ex                *StringValue `json:"ex"`
	NeedVerification  *Int32Value  `json:"needVerification"`
	LookMemberInfo    *Int32Value  `json:"lookMemberInfo"`
	ApplyMemberFriend *Int32Value  `json:"applyMemberFriend"`
}

type SetGroupInfoExState struct { // group.SetGroupInfoExReq
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

type InviteState struct { // group.InviteUserToGroupReq
	GroupID        string   `json:"groupID"`
	Reason         string   `json:"reason"`
	InvitedUserIDs []string `json:"invitedUserIDs"`
}

type ConversationState struct { // model.Conversation
	OwnerUserID      string `json:"ownerUserId"`
	ConversationID   string `json:"conversationId"`
	ConversationType int32  `json:"conversationType"`
	UserID           string `json:"userId"`
	GroupID          string `json:"groupId"`
	RecvMsgOpt       int32  `json:"recvMsgOpt"`
	IsPinned         bool   `json:"isPinned"`
	IsPrivateChat    bool   `json:"isPrivateChat"`
	BurnDuration     int32  `json:"burnDuration"`
	GroupAtType      int32  `json:"groupAtType"`
	AttachedInfo     string `json:"attachedInfo"`
	Ex               string `json:"ex"`
}

type FriendRemarkState struct {
	OwnerUserID  string `json:"ownerUserID"`
	FriendUserID string `json:"friendUserID"`
	Remark       string `json:"remark"`
}

type ImportFriendsState struct {
	OwnerUserID   string   `json:"ownerUserID"`
	FriendUserIDs []string `json:"friendUserIDs"`
}
