"""Notifications: an organisation's channels (webhook, Slack, Discord, email), the deliveries a deployment's
end queues for them (in the transaction of the change), and their at-least-once delivery."""
