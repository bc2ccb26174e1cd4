package openim

// Mirrors of openimsdk/protocol wrapperspb (wrapperspb/wrapperspb.go, v0.0.73-alpha.18): the
// wrappers are written and read as plain JSON values, not as {"value": ...} objects.

import (
	"encoding/json"
	"strconv"
)

type StringValue struct{ Value string }

type Int32Value struct{ Value int32 }

func String(v string) *StringValue { return &StringValue{Value: v} }
func Int32(v int32) *Int32Value    { return &Int32Value{Value: v} }

func (m *StringValue) UnmarshalJSON(p []byte) error { return json.Unmarshal(p, &m.Value) }
func (m *StringValue) MarshalJSON() ([]byte, error) { return json.Marshal(m.Value) }

func (m *Int32Value) UnmarshalJSON(p []byte) error {
	value, err := strconv.ParseInt(string(p), 10, 32)
	if err != nil {
		return err
	}
	m.Value = int32(value)
	return nil
}

func (m *Int32Value) MarshalJSON() ([]byte, error) {
	return []byte(strconv.FormatInt(int64(m.Value), 10)), nil
}
