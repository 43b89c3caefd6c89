package cli

import "encoding/json"

// Chained holds another command's result inside a request (see Chainer):
// V has the fields this command reads, decoded leniently (the producer may
// add fields), and the raw JSON is kept, so a command that passes the
// result on (`volant-net tap add` passes the lease to volant-launch)
// passes it unchanged.
type Chained[T any] struct {
	V   T
	raw json.RawMessage
}

// UnmarshalJSON implements json.Unmarshaler.
func (c *Chained[T]) UnmarshalJSON(b []byte) error {
	if err := json.Unmarshal(b, &c.V); err != nil {
		return err
	}
	c.raw = append(json.RawMessage(nil), b...)
	return nil
}

// MarshalJSON implements json.Marshaler: the result as it came.
func (c *Chained[T]) MarshalJSON() ([]byte, error) {
	if c.raw == nil {
		return json.Marshal(c.V)
	}
	return c.raw, nil
}
